"""Files: PLY, label maps, the trained-scene folder (`scene_dir`), exports and edits.json (`exports`), atomic
writes, output-folder guards and the user cache."""
