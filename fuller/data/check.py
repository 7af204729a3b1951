"""Validate a nuScenes root before anything opens it: what `fuller check-data` runs.

The devkit's `NuScenes()` and `NuScenesMap()` stop at the first broken thing with a bare assert or
traceback, and a missing or truncated file otherwise surfaces hours into a training. So this module
reads the tables as plain JSON itself and collects every problem, each naming its path and what is
wrong (expected vs got where that applies):

- the version folder (`v1.0-mini`, `v1.0-trainval`, ...) and every table of the devkit's schema,
  present and parseable as a list of records;
- the references the devkit follows when it indexes the tables, aggregates sweeps and computes
  velocities (sample_data -> sample, ego_pose, calibrated_sensor; sample -> scene; scene -> log; ...),
  and a key frame of every channel fuller reads in every sample;
- every file that `sample_data.filename` names (samples/ and sweeps/, images, LiDAR, radar) and the
  map files: each log's `maps/expansion/<location>.json` (v1.3 or later) and the basemap PNGs.

File policy, sized for ~1.2M files on a full trainval root: every file is stat'ed (present, not
empty, its size summed). LiDAR `.pcd.bin` files must be a whole number of 5-float32 rows (20 bytes),
which is all their size can say. Images get their header decoded (format, width x height against
the table) and JPEGs their tail read for the end-of-image marker a truncated file lacks; decoding
every pixel would take hours on trainval and still not prove the pixels right. Files are inspected
by a pool of threads, since on network storage the time is waiting, not CPU.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from tqdm import tqdm

# The devkit's table schema: `NuScenes.table_names`, every one loaded unconditionally.
TABLES = ("scene", "sample", "sample_data", "sample_annotation", "ego_pose", "calibrated_sensor", "sensor", "log",
          "map", "instance", "category", "attribute", "visibility")

# (table, field, referenced table, empty allowed): references the devkit follows, so a dangling one is a
# KeyError at load time (reverse index), in `from_file_multisweep` (prev) or in `box_velocity` (prev/next).
REFERENCES = (
    ("sample_data", "sample_token", "sample", False),
    ("sample_data", "ego_pose_token", "ego_pose", False),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor", False),
    ("sample_data", "prev", "sample_data", True),
    ("sample_data", "next", "sample_data", True),
    ("calibrated_sensor", "sensor_token", "sensor", False),
    ("sample", "scene_token", "scene", False),
    ("sample", "prev", "sample", True),
    ("sample", "next", "sample", True),
    ("scene", "log_token", "log", False),
    ("scene", "first_sample_token", "sample", False),
    ("scene", "last_sample_token", "sample", False),
    ("sample_annotation", "sample_token", "sample", False),
    ("sample_annotation", "instance_token", "instance", False),
    ("sample_annotation", "visibility_token", "visibility", False),
    ("sample_annotation", "attribute_tokens", "attribute", False),
    ("sample_annotation", "prev", "sample_annotation", True),
    ("sample_annotation", "next", "sample_annotation", True),
    ("instance", "category_token", "category", False),
    ("instance", "first_annotation_token", "sample_annotation", False),
    ("instance", "last_annotation_token", "sample_annotation", False),
    ("map", "log_tokens", "log", False),
)

# Key frames every sample must have: the channels `NuScenesDataset.load` reads.
CHANNELS = ("LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
            "CAM_BACK_RIGHT")

# `nuscenes.map_expansion.map_api.locations`, the maps `NuScenesMap` accepts (importing it costs ~1.5 s).
LOCATIONS = ("singapore-onenorth", "singapore-hollandvillage", "singapore-queenstown", "boston-seaport")

LIDAR_ROW_BYTES = 20  # x, y, z, intensity, ring index as float32: what `LidarPointCloud.from_file` reshapes to
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_TAIL_BYTES = 32  # the end-of-image marker may be followed by a few padding bytes
BATCH = 256  # files per thread-pool task: few futures even for a million files


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the root: the path it is about and what is wrong with it."""

    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass
class Summary:
    """What the root holds, counted from the tables that parsed."""

    scenes: int = 0
    samples: int = 0
    keyframes: int = 0
    sweeps: int = 0
    annotations: int = 0
    locations: tuple[str, ...] = ()
    files: int = 0
    bytes: int = 0


@dataclass
class CheckReport:
    """The result of checking one version of a root: its summary and every problem found."""

    root: str
    version: str | None
    summary: Summary = field(default_factory=Summary)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(root: str | Path, version: str | None = None, progress: bool = True,
                  threads: int = 8) -> list[CheckReport]:
    """Check `version` of the root, or, without one, every `v1.0-*` folder it holds (one report each)."""
    root = Path(root)
    if not root.is_dir():
        return [CheckReport(str(root), version, problems=[Problem(str(root), "dataset root does not exist or "
                                                                            "is not a directory")])]
    found = find_versions(root)
    if version is None and not found:
        return [CheckReport(str(root), None, problems=[Problem(str(root), "no table folder v1.0-* (expected "
                                                                          "v1.0-mini or v1.0-trainval)")])]
    return [check_version(root, v, found, progress, threads) for v in ([version] if version else found)]


def find_versions(root: Path) -> list[str]:
    """The table folders of a root: `v1.0-mini`, `v1.0-trainval`, `v1.0-test`, ..."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0-"))


def check_version(root: Path, version: str, found: Sequence[str], progress: bool, threads: int) -> CheckReport:
    """Tables, references, referenced files and maps of one version."""
    report = CheckReport(str(root), version)
    folder = root / version
    if not folder.is_dir():
        report.problems.append(Problem(str(folder), f"version folder missing (found: {', '.join(found) or 'none'})"))
        return report
    tables = {}
    for name in TABLES:
        records, problem = load_table(folder / f"{name}.json")
        if problem:
            report.problems.append(problem)
        else:
            tables[name] = records
    report.problems += check_references(folder, tables)
    report.problems += check_keyframes(folder, tables)
    report.summary = summarise(tables)
    report.problems += check_maps(root, tables)
    records, problems = file_records(folder, tables.get("sample_data", []))
    report.problems += problems
    report.summary.files = len(records)
    for size, problem in inspect_files(root, records, progress, threads):
        report.summary.bytes += size
        if problem:
            report.problems.append(problem)
    return report


def load_table(path: Path) -> tuple[list[dict], Problem | None]:
    """A table's records, or the problem that makes it unusable (missing, not JSON, not records)."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        return [], Problem(str(path), "table missing")
    except json.JSONDecodeError as exc:
        return [], Problem(str(path), f"not valid JSON: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        return [], Problem(str(path), f"unreadable: {exc}")
    if not isinstance(records, list):
        return [], Problem(str(path), f"expected a JSON list of records, got a {type(records).__name__}")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict) or not isinstance(r.get("token"), str)),
               None)
    if bad is not None:
        return [], Problem(str(path), f"record {bad}: expected an object with a string 'token', "
                                      f"got {records[bad]!r:.80}")
    return records, None


def file_records(folder: Path, sample_data: list[dict]) -> tuple[list[dict], list[Problem]]:
    """The sample_data records that name a file, and a problem for each that does not."""
    path = str(folder / "sample_data.json")
    named = [r for r in sample_data if isinstance(r.get("filename"), str) and r["filename"]]
    unnamed = [r for r in sample_data if not (isinstance(r.get("filename"), str) and r["filename"])]
    return named, [Problem(path, f"sample_data {r['token']}: no file name (field 'filename' is {r.get('filename')!r})")
                   for r in unnamed]


def check_references(folder: Path, tables: dict[str, list[dict]]) -> list[Problem]:
    """Every dangling reference between two tables that parsed (a broken table is reported once, above)."""
    tokens = {name: {r["token"] for r in records} for name, records in tables.items()}
    problems = []
    for table, key, target, empty_ok in REFERENCES:
        if table not in tables or target not in tables:
            continue
        path = str(folder / f"{table}.json")
        for record in tables[table]:
            if key not in record:
                problems.append(Problem(path, f"{table} {record['token']}: no field '{key}'"))
                continue
            values = record[key] if isinstance(record[key], list) else [record[key]]
            problems += [Problem(path, f"{table} {record['token']}: {key} {value!r} is not a token of {target}.json")
                         for value in values if not (empty_ok and value == "") and not is_token(value, tokens[target])]
    if "map" in tables and "log" in tables:
        mapped = {t for m in tables["map"] for t in m.get("log_tokens", ()) if isinstance(t, str)}
        problems += [Problem(str(folder / "log.json"), f"log {log['token']}: in no map record's log_tokens")
                     for log in tables["log"] if log["token"] not in mapped]
    return problems


def is_token(value: object, tokens: set[str]) -> bool:
    """Whether a field's value is one of the tokens (a list or number in a token field is not)."""
    return isinstance(value, str) and value in tokens


def check_keyframes(folder: Path, tables: dict[str, list[dict]]) -> list[Problem]:
    """Samples lacking a key frame of a channel fuller reads (`NuScenesDataset.load` would raise KeyError)."""
    if not all(t in tables for t in ("sample", "sample_data", "calibrated_sensor", "sensor")):
        return []
    channel_of_sensor = {s["token"]: s.get("channel") for s in tables["sensor"]}
    channel_of_cs = {c["token"]: channel_of_sensor.get(c.get("sensor_token")) for c in tables["calibrated_sensor"]}
    channels: dict[str, set[str]] = {s["token"]: set() for s in tables["sample"]}
    for sd in tables["sample_data"]:
        if sd.get("is_key_frame") and sd.get("sample_token") in channels:
            channels[sd["sample_token"]].add(channel_of_cs.get(sd.get("calibrated_sensor_token")))
    path = str(folder / "sample.json")
    return [Problem(path, f"sample {token}: no key frame of {', '.join(c for c in CHANNELS if c not in present)}")
            for token, present in channels.items() if not present.issuperset(CHANNELS)]


def summarise(tables: dict[str, list[dict]]) -> Summary:
    """Counts of what the tables hold (zero for a table that did not parse)."""
    sample_data = tables.get("sample_data", [])
    keyframes = sum(1 for sd in sample_data if sd.get("is_key_frame"))
    return Summary(scenes=len(tables.get("scene", [])), samples=len(tables.get("sample", [])), keyframes=keyframes,
                   sweeps=len(sample_data) - keyframes, annotations=len(tables.get("sample_annotation", [])),
                   locations=tuple(sorted({log.get("location") for log in tables.get("log", [])} - {None})))


def check_maps(root: Path, tables: dict[str, list[dict]]) -> list[Problem]:
    """Each log's map expansion file (what `NuScenesMap` opens) and each basemap PNG (what `NuScenes` asserts)."""
    problems = []
    for location in sorted({log.get("location") for log in tables.get("log", [])} - {None}):
        problems += check_expansion(root / "maps" / "expansion" / f"{location}.json", location)
    for record in tables.get("map", []):
        path = root / str(record.get("filename", ""))
        if not path.is_file():
            problems.append(Problem(str(path), f"basemap of map {record['token']} missing"))
    return problems


def check_expansion(path: Path, location: str) -> list[Problem]:
    """A map expansion file: a known location, present, parseable, version 1.3 or later (the devkit refuses older)."""
    if location not in LOCATIONS:
        return [Problem(str(path), f"location {location!r} is not a nuScenes map (expected one of "
                                   f"{', '.join(LOCATIONS)})")]
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        return [Problem(str(path), f"map expansion for location {location!r} missing (NuScenesMap needs it)")]
    except json.JSONDecodeError as exc:
        return [Problem(str(path), f"not valid JSON: {exc}")]
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(str(path), f"unreadable: {exc}")]
    version = content.get("version", "1.0") if isinstance(content, dict) else None
    if not isinstance(version, str) or version < "1.3":
        return [Problem(str(path), f"map expansion version: expected 1.3 or later, got {version!r}")]
    return []


def inspect_files(root: Path, records: Sequence[dict], progress: bool,
                  threads: int) -> Iterator[tuple[int, Problem | None]]:
    """(bytes, problem or None) for the file of each sample_data record, checked by a thread pool, in order."""
    batches = [records[i:i + BATCH] for i in range(0, len(records), BATCH)]
    with ThreadPoolExecutor(max(1, threads)) as pool, \
            tqdm(total=len(records), desc="files", unit="file", disable=not progress) as bar:
        for results in pool.map(lambda batch: [inspect_record(root, r) for r in batch], batches):
            bar.update(len(results))
            yield from results


def inspect_record(root: Path, record: dict) -> tuple[int, Problem | None]:
    """One sample_data file, with the image size its record states."""
    path = root / record["filename"]
    size, what = inspect_file(path, (record.get("width") or 0, record.get("height") or 0))
    return size, Problem(str(path), what) if what else None


def inspect_file(path: Path, image_size: tuple[int, int] = (0, 0)) -> tuple[int, str | None]:
    """(bytes, what is wrong or None) for a data file, by its kind: LiDAR rows, image header and end, else size.
    `image_size` (width, height) is what the table says; (0, 0) skips that comparison."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return 0, "file missing"
    except OSError as exc:
        return 0, f"unreadable: {exc}"
    if size == 0:
        return 0, "empty file (0 bytes)"
    name = path.name.lower()
    if name.endswith(".pcd.bin"):
        return size, lidar_problem(size)
    if name.endswith(IMAGE_SUFFIXES):
        return size, image_problem(path, image_size)
    return size, None


def lidar_problem(size: int) -> str | None:
    """A LiDAR file's size must be whole 5-float32 rows; anything else is a truncated (or foreign) file."""
    if size % LIDAR_ROW_BYTES:
        return (f"truncated LiDAR file: {size} bytes is not a whole number of {LIDAR_ROW_BYTES}-byte points "
                f"(5 float32), {size % LIDAR_ROW_BYTES} bytes too many")
    return None


def image_problem(path: Path, expected: tuple[int, int]) -> str | None:
    """An image's header must decode to the size the table states, and a JPEG must end with its EOI marker."""
    try:
        with Image.open(path) as image:
            got, kind = image.size, image.format
    except (OSError, ValueError, SyntaxError) as exc:
        return f"unreadable image: {exc}"
    if all(expected) and got != tuple(expected):
        return f"image is {got[0]}x{got[1]}, sample_data says {expected[0]}x{expected[1]}"
    if kind == "JPEG" and not jpeg_ends(path):
        return "truncated JPEG: no end-of-image marker (FF D9) at the end of the file"
    return None


def jpeg_ends(path: Path) -> bool:
    """Whether the JPEG's last bytes hold the end-of-image marker (only EOI is FF D9 in a JPEG's tail:
    entropy-coded data escapes every FF)."""
    with open(path, "rb") as f:
        f.seek(-min(JPEG_TAIL_BYTES, os.fstat(f.fileno()).st_size), os.SEEK_END)
        return b"\xff\xd9" in f.read()
