"""The synthetic world: a town, its traffic and a nuScenes sensor rig, written as a nuScenes dataset."""
