"""Camera simulation: the painted ground seen through the real intrinsics, with the agents' boxes.

The ground is flat, so the ground point under each pixel is fixed in the ego frame: it is computed
once per camera and each frame only moves it into the world to look up the town's label raster.
Boxes are drawn as shaded polygons, far to near (painter's algorithm), with back faces culled and
faces clipped at a near plane; an instance-id buffer drawn alongside gives each box's visible pixels.

With `camera_conditions="varied"` (the study world) each scene is seen in one `Condition`: clear, night
(the image darkened, the road lit near the car, objects darker still, sensor noise) or fog (ground,
sky and objects fade into the fog colour with distance), and every image has its own exposure. The
near field's markings stay visible in all three; objects further off fade or go dark.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import Polygon, box as shapely_box
from shapely.ops import unary_union

from ..geometry import box_corners
from .rig import Camera, pose_matrix, yaw_rotation
from .town import ASPHALT, CARPARK, GRASS, WALKWAY, WHITE_PAINT, YELLOW_PAINT, Town

NEAR = 0.2
GROUND_COLOURS = np.zeros((256, 3), dtype=np.float32)
for label, rgb in {GRASS: (84, 104, 58), ASPHALT: (68, 68, 72), WALKWAY: (152, 148, 138),
                   CARPARK: (96, 96, 102), WHITE_PAINT: (228, 228, 224), YELLOW_PAINT: (214, 178, 40)}.items():
    GROUND_COLOURS[label] = rgb
HORIZON = np.array([176, 190, 200], dtype=np.float32)
SKY_TOP = np.array([92, 136, 196], dtype=np.float32)
OBJECT_COLOURS = {
    "vehicle.car": (40, 90, 200), "vehicle.truck": (230, 120, 30), "vehicle.bus.rigid": (240, 200, 20),
    "vehicle.trailer": (150, 80, 170), "vehicle.construction": (250, 170, 0),
    "human.pedestrian.adult": (200, 30, 60), "vehicle.motorcycle": (20, 170, 160),
    "vehicle.bicycle": (120, 200, 40), "movable_object.trafficcone": (255, 90, 0),
    "movable_object.barrier": (235, 235, 235),
}
SUN = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])
HAZE_DISTANCE = 300.0  # the clear day's haze: the ground fades to HORIZON as (distance / this)^1.5

# `camera_conditions` values: "clear" (every scene clear, one exposure) or "varied" (a condition per
# scene drawn with these shares, and a per-image exposure).
CONDITIONS = ("clear", "varied")
WEATHER_SHARES = {"clear": 0.4, "night": 0.3, "fog": 0.3}
EXPOSURE = (0.6, 1.5)  # per-image exposure gain, every condition
NIGHT_GAIN = (0.18, 0.3)  # the whole image at night
NIGHT_OBJECT_GAIN = (0.25, 0.4)  # objects' colours at night, relative to the rest of the image
NIGHT_NOISE = 6.0  # sensor noise sigma at night, of 255
# Street lights and headlights light the road near the car at night: the ground's gain there is this many
# times higher, falling off as exp(-(distance / NIGHT_LIGHT_REACH)^2).
NIGHT_LIGHT, NIGHT_LIGHT_REACH = 1.5, 20.0
NIGHT_SKY = 0.35  # the night sky's brightness relative to the (darkened) ground's
FOG_DISTANCE = (18.0, 30.0)  # fog: a surface this far off is 63 % fog colour (1 - exp(-(d / D)^1.5))


@dataclass(frozen=True)
class Condition:
    """How one scene's cameras see: the name recorded in the scene's description and its parameters."""

    name: str = "clear"  # clear, night or fog
    gain: float = 1.0  # whole-image gain (before the per-image exposure)
    object_gain: float = 1.0  # objects' colours, relative to the rest of the image
    noise_sigma: float = 0.0  # Gaussian sensor noise, of 255
    fog_distance: float | None = None  # None: no fog (the clear day's haze only)

    def fog(self, distance: np.ndarray) -> np.ndarray:
        """Fraction of fog colour at `distance` metres (0 without fog)."""
        if self.fog_distance is None:
            return np.zeros_like(distance)
        return 1.0 - np.exp(-(np.asarray(distance) / self.fog_distance) ** 1.5)


def draw_condition(rng: np.random.Generator) -> Condition:
    """A scene's condition: clear 40 %, night 30 %, fog 30 %. Every parameter is drawn whatever the
    condition, so the draws after it do not depend on which it is."""
    names = list(WEATHER_SHARES)
    name = names[int(np.searchsorted(np.cumsum(list(WEATHER_SHARES.values())), rng.random(), side="right"))]
    gain, object_gain = float(rng.uniform(*NIGHT_GAIN)), float(rng.uniform(*NIGHT_OBJECT_GAIN))
    fog_distance = float(rng.uniform(*FOG_DISTANCE))
    if name == "night":
        return Condition(name, gain=gain, object_gain=object_gain, noise_sigma=NIGHT_NOISE)
    if name == "fog":
        return Condition(name, fog_distance=fog_distance)
    return Condition(name)
# Faces as (outward normal in the box frame, corner indices in fuller.geometry.UNIT_CORNERS order).
FACES = {(1, 0, 0): [0, 1, 2, 3], (-1, 0, 0): [4, 7, 6, 5], (0, 1, 0): [0, 3, 7, 4],
         (0, -1, 0): [1, 5, 6, 2], (0, 0, 1): [0, 4, 5, 1], (0, 0, -1): [3, 2, 6, 7]}


class CameraRenderer:
    """Renders one camera of the rig; create once, call `render` per frame."""

    def __init__(self, camera: Camera) -> None:
        self.camera = camera
        u, v = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(camera.intrinsic).T
        rays_ego = rays @ camera.rotation.T
        down = rays_ego[..., 2] < -1e-6
        t = np.where(down, -camera.translation[2] / np.where(down, rays_ego[..., 2], -1.0), np.inf)
        ground = camera.translation[:2] + np.where(down, t, 0.0)[..., None] * rays_ego[..., :2]
        dist = np.where(down, np.hypot(*(ground - camera.translation[:2]).transpose(2, 0, 1)), np.inf)
        self._ground = ground
        self._dist = dist
        self._fog = np.clip(dist / HAZE_DISTANCE, 0.0, 1.0)[..., None] ** 1.5
        elevation = np.arctan2(rays_ego[..., 2], np.hypot(rays_ego[..., 0], rays_ego[..., 1]))
        sky_mix = np.clip(elevation / 0.5, 0.0, 1.0)[..., None]
        self._sky = (HORIZON * (1 - sky_mix) + SKY_TOP * sky_mix).astype(np.float32)
        self._is_ground = down & (dist < 1000.0)

    def render(self, town: Town, ego2global: np.ndarray, boxes: np.ndarray, colours: np.ndarray,
               condition: Condition | None = None, exposure: float = 1.0,
               noise: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8, instance buffer (H, W) int32 (box index + 1, 0 = none), and each
        box's unoccluded projected area in pixels (B,), for visibility. With a `condition`, the image is
        seen in it at this `exposure`, its sensor noise drawn from `noise`; without one (the default
        world), as on a clear day at exposure 1."""
        cam = self.camera
        g = self._ground.reshape(-1, 2)
        world = g @ ego2global[:2, :2].T + ego2global[:2, 3]
        ground = GROUND_COLOURS[town.label_at(world[:, 0], world[:, 1])].reshape(cam.height, cam.width, 3)
        ground = ground * (1 - self._fog) + HORIZON * self._fog
        if condition is None:
            img = np.where(self._is_ground[..., None], ground, self._sky)
        else:
            img = self._in_condition(ground, condition, exposure)
        image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        ids = Image.new("I", (cam.width, cam.height), 0)
        draw, draw_ids = ImageDraw.Draw(image), ImageDraw.Draw(ids)

        cam2global = ego2global @ pose_matrix(cam.rotation, cam.translation)
        global2cam = np.linalg.inv(cam2global)
        areas = np.zeros(len(boxes))
        frame = shapely_box(-0.5, -0.5, cam.width - 0.5, cam.height - 0.5)
        centres_cam = boxes[:, :3] @ global2cam[:3, :3].T + global2cam[:3, 3]
        for b in np.argsort(-np.linalg.norm(centres_cam, axis=1)):
            if centres_cam[b, 2] < -np.linalg.norm(boxes[b, 3:6]):
                continue  # entirely behind the camera
            polys = []
            for corners_cam, shade in self._visible_faces(boxes[b], global2cam):
                face = _clip_near(corners_cam)
                if len(face) < 3:
                    continue
                uv = face @ cam.intrinsic.T
                uv = uv[:, :2] / uv[:, 2:3]
                pts = [tuple(p) for p in uv]
                colour = colours[b] * shade
                if condition is not None:
                    colour = self._object_in_condition(colour, float(np.linalg.norm(corners_cam.mean(0))),
                                                       condition, exposure)
                draw.polygon(pts, fill=tuple(int(c) for c in np.clip(colour, 0, 255)))
                draw_ids.polygon(pts, fill=int(b) + 1)
                polys.append(Polygon(uv).buffer(0))
            if polys:
                areas[b] = unary_union(polys).intersection(frame).area
        pixels = np.asarray(image)
        if condition is not None and condition.noise_sigma > 0.0 and noise is not None:
            noisy = pixels + noise.normal(0.0, condition.noise_sigma, pixels.shape)
            pixels = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
        return pixels, np.asarray(ids, dtype=np.int32), areas

    def _in_condition(self, ground: np.ndarray, condition: Condition, exposure: float) -> np.ndarray:
        """Ground (hazed as on a clear day) and sky in `condition`, at `exposure`: float (H, W, 3)."""
        sky = self._sky
        if condition.fog_distance is not None:
            fog = condition.fog(self._dist)[..., None]
            ground = ground * (1 - fog) + HORIZON * fog
            sky = np.broadcast_to(HORIZON, sky.shape)
        gain = condition.gain * exposure
        if condition.name == "night":
            light = 1.0 + NIGHT_LIGHT * np.exp(-(np.minimum(self._dist, 1e3) / NIGHT_LIGHT_REACH) ** 2)
            ground, sky = ground * light[..., None], sky * NIGHT_SKY
        return np.where(self._is_ground[..., None], ground, sky) * gain

    @staticmethod
    def _object_in_condition(colour: np.ndarray, distance: float, condition: Condition,
                             exposure: float) -> np.ndarray:
        """An object face's colour `distance` metres from the camera in `condition`, at `exposure`."""
        fog = float(condition.fog(np.asarray(distance)))
        colour = colour * condition.object_gain * (1 - fog) + HORIZON * fog
        return colour * condition.gain * exposure

    @staticmethod
    def _visible_faces(box: np.ndarray, global2cam: np.ndarray):
        """Faces facing the camera as (corners in the camera frame, shade from the sun)."""
        rot = yaw_rotation(box[6])
        corners = box_corners(box[None])[0]
        corners_cam = corners @ global2cam[:3, :3].T + global2cam[:3, 3]
        for normal, idx in FACES.items():
            n_world = rot @ np.array(normal, dtype=np.float64)
            n_cam = global2cam[:3, :3] @ n_world
            face = corners_cam[idx]
            if np.dot(n_cam, face.mean(0)) < 0.0:
                yield face, 0.45 + 0.55 * max(0.0, float(n_world @ SUN))


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon (camera frame) to z >= NEAR."""
    out = []
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        a_in, b_in = a[2] >= NEAR, b[2] >= NEAR
        if a_in:
            out.append(a)
        if a_in != b_in:
            out.append(a + (b - a) * (NEAR - a[2]) / (b[2] - a[2]))
    return np.asarray(out)
