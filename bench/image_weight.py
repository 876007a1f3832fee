"""Image weight, measured in one run: each step's layer against the installed size of what it installed.

    ./dev python bench/image_weight.py [--target cpu] [--target gpu]

For the dependency step, "installed" is the files (RECORD) of every Python distribution in the image that the
base does not have; for the Horovod step, Horovod's own. A ratio near 1.00 means the layer holds the packages
and nothing else: no pip cache, no downloaded archive, no build tree or build tool left in it. Uses the images
`invoke build` makes from the current configuration (invoke.yaml, INVOKE_*); builds them if missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amltrain import config, engine, images  # noqa: E402

# Runs in the image and in its base: every distribution with the bytes of its recorded files.
INSTALLED = """
import importlib.metadata as m, json, os
sizes = {}
for dist in m.distributions():
    total = 0
    for f in dist.files or ():
        path = dist.locate_file(f)
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
    sizes[f"{dist.metadata['Name'].lower()}=={dist.version}"] = total
print(json.dumps(sizes))
"""
# What an install step must not leave behind, whatever its size: pip's cache (its folder stays, empty, where the
# build's cache mount was), Horovod's build tree and build tools, the spec's temporary files.
LEFTOVERS = ("for p in /root/.cache/pip /tmp/amltrain-horovod.* /tmp/amltrain-yaml /tmp/requirements.txt; do "
             '[ -e "$p" ] && [ -n "$(find "$p" -mindepth 1 -print -quit 2>/dev/null; [ -f "$p" ] && echo f)" ] '
             '&& echo "$p"; done; true')


def installed(image: str) -> dict[str, int]:
    out = engine.connect().containers.run(image, ["python", "-c", INSTALLED], remove=True)
    return json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", help="cpu and/or gpu (default: every configured target)")
    args = parser.parse_args()
    cfg = config.load(ROOT)
    client = engine.connect()
    print(f"{'image':<34} {'step':<20} {'layer':>10} {'installed':>10} {'ratio':>6}")
    for target in args.target or config.targets(cfg):
        spec = config.image_spec(cfg, target, ROOT)
        ref = images.image_ref(spec)
        if not engine.image_exists(client, ref):
            subprocess.run([sys.executable, "-m", "invoke", "build", "--target", target], cwd=ROOT, check=True,
                           capture_output=True)
        weight = images.image_weight(client, ref, spec.base_image)
        if weight.added is None:
            sys.exit(f"{spec.base_image} is not in the local image store: its share of {ref} is unknown")
        in_base = installed(spec.base_image)
        in_image = installed(ref)
        added = {name: size for name, size in in_image.items() if name not in in_base}
        horovod = sum(size for name, size in added.items() if name.startswith("horovod=="))
        expected = {"Python dependencies": sum(added.values()) - horovod, "Horovod": horovod}
        layers = dict(weight.steps)
        for step, size in expected.items():
            layer = layers.get(step, 0)
            ratio = f"{layer / size:.3f}" if size else "-"
            print(f"{ref:<34} {step:<20} {images.human_size(layer):>10} {images.human_size(size):>10} {ratio:>6}")
        left = client.containers.run(ref, ["sh", "-c", LEFTOVERS], remove=True).decode().split()
        print(f"{ref:<34} image {images.human_size(weight.total)}, added over the base "
              f"{images.human_size(weight.added)} ({len(added)} distributions); build leftovers: "
              f"{', '.join(left) if left else 'none'}")


if __name__ == "__main__":
    main()
