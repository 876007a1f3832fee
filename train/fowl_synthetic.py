"""A tiny, deterministic chickens-vs-turkeys ImageFolder dataset, drawn with Pillow.

The real fowl dataset is a download; tests, CI and offline smoke runs need something with the same layout
that appears instantly, never touches the network, and needs nothing but Pillow (it runs on the host, not
in the training image). Pictures are simple but not trivial: a pale round bird with a red comb (chicken)
or a brown bird in front of a fanned tail (turkey), at a random place, scale and facing, on a random
two-tone background with clutter. Same arguments give byte-identical files.

    python train/fowl_synthetic.py OUT_DIR [--train-per-class N] [--val-per-class N] [--size PX] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("chickens", "turkeys")
SUPERSAMPLE = 3  # draw large, then downscale: smooth edges without anti-aliasing support in ImageDraw


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int = 20) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _background(rng: random.Random, size: int) -> Image.Image:
    """Sky over ground plus clutter blobs, so the classifier cannot key on the background."""
    img = Image.new("RGB", (size, size), _jitter(rng, (150, 190, 225), 40))
    draw = ImageDraw.Draw(img)
    horizon = int(size * rng.uniform(0.45, 0.8))
    draw.rectangle((0, horizon, size, size), fill=_jitter(rng, (110, 150, 80), 45))
    for _ in range(rng.randint(2, 6)):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.02, 0.08) * size
        draw.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=_jitter(rng, (128, 128, 128), 90))
    return img


def _legs(draw: ImageDraw.ImageDraw, cx: float, bottom: float, s: float) -> None:
    for dx in (-0.12, 0.12):
        x = cx + dx * s
        draw.line((x, bottom - 0.05 * s, x, bottom + 0.18 * s), fill=(230, 150, 40), width=max(1, int(s * 0.04)))


def _chicken(rng: random.Random, draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, face: int) -> None:
    """Pale or yellow round body, red comb and wattle, orange beak."""
    body = _jitter(rng, rng.choice([(245, 240, 225), (250, 225, 120), (235, 215, 170)]))
    _legs(draw, cx, cy + 0.3 * s, s)
    draw.ellipse((cx - 0.4 * s, cy - 0.3 * s, cx + 0.4 * s, cy + 0.32 * s), fill=body)
    draw.polygon([(cx - face * 0.35 * s, cy - 0.1 * s), (cx - face * 0.6 * s, cy - 0.35 * s),
                  (cx - face * 0.45 * s, cy + 0.05 * s)], fill=body)  # short upturned tail
    hx, hy, hr = cx + face * 0.32 * s, cy - 0.38 * s, 0.16 * s
    for i in range(3):  # comb
        bx = hx + face * (i - 1) * 0.08 * s
        draw.ellipse((bx - 0.06 * s, hy - hr - 0.1 * s, bx + 0.06 * s, hy - hr + 0.04 * s), fill=(220, 20, 30))
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=body)
    draw.ellipse((hx + face * 0.02 * s - 0.04 * s, hy + 0.08 * s, hx + face * 0.02 * s + 0.04 * s, hy + 0.2 * s),
                 fill=(210, 20, 30))  # wattle
    draw.polygon([(hx + face * hr, hy - 0.04 * s), (hx + face * (hr + 0.12 * s), hy + 0.01 * s),
                  (hx + face * hr, hy + 0.05 * s)], fill=(240, 160, 30))
    draw.ellipse((hx + face * 0.05 * s - 0.025 * s, hy - 0.05 * s, hx + face * 0.05 * s + 0.025 * s, hy),
                 fill=(20, 20, 20))


def _turkey(rng: random.Random, draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, face: int) -> None:
    """A big fan of banded tail feathers behind a brown body, small bluish head with a red snood."""
    fan_r = s * rng.uniform(0.55, 0.7)
    feathers = rng.randint(9, 15)
    dark, light = _jitter(rng, (95, 60, 30)), _jitter(rng, (190, 140, 80))
    for i in range(feathers):
        a0 = 180 + i * 180 / feathers
        a1 = a0 + 180 / feathers
        box = (cx - fan_r, cy - fan_r, cx + fan_r, cy + fan_r)
        draw.pieslice(box, a0, a1, fill=light if i % 2 else dark, outline=(60, 35, 15))
        inner = fan_r * 0.8
        draw.pieslice((cx - inner, cy - inner, cx + inner, cy + inner), a0, a1, fill=dark if i % 2 else light)
    _legs(draw, cx, cy + 0.3 * s, s)
    body = _jitter(rng, (110, 70, 35))
    draw.ellipse((cx - 0.3 * s, cy - 0.25 * s, cx + 0.3 * s, cy + 0.35 * s), fill=body)
    nx, ny = cx + face * 0.22 * s, cy - 0.2 * s
    hx, hy, hr = cx + face * 0.3 * s, cy - 0.42 * s, 0.09 * s
    draw.line((nx, ny, hx, hy), fill=(150, 160, 200), width=max(1, int(0.08 * s)))
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=_jitter(rng, (140, 160, 210)))
    draw.line((hx + face * hr, hy, hx + face * hr, hy + 0.15 * s), fill=(200, 20, 30), width=max(1, int(0.04 * s)))
    draw.polygon([(hx + face * hr, hy - 0.03 * s), (hx + face * (hr + 0.07 * s), hy),
                  (hx + face * hr, hy + 0.03 * s)], fill=(200, 170, 90))


def draw_bird(kind: str, rng: random.Random, size: int) -> Image.Image:
    """One picture of ``kind`` ("chickens" or "turkeys") at a random position, scale and facing."""
    big = size * SUPERSAMPLE
    img = _background(rng, big)
    s = big * rng.uniform(0.45, 0.75)
    margin = 0.45 * s
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    face = rng.choice((-1, 1))
    (_chicken if kind == "chickens" else _turkey)(rng, ImageDraw.Draw(img), cx, cy, s, face)
    img = img.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, fillcolor=img.getpixel((0, 0)))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def generate(out_dir: str | Path, train_per_class: int = 16, val_per_class: int = 8, size: int = 64,
             seed: int = 0) -> Path:
    """Write ``out_dir/{train,val}/{chickens,turkeys}/NNNN.png`` and return ``out_dir``.

    Each picture has its own generator seeded from (seed, split, class, index), so one image does not depend
    on how many others were drawn. Files are written to a temporary sibling directory which is renamed into
    place at the end: ``out_dir`` is either absent or complete. An existing non-empty ``out_dir`` is refused.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty directory")
    if size < 8 or min(train_per_class, val_per_class) < 0:
        raise ValueError("size must be >= 8 and counts >= 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for kind in CLASSES:
                folder = tmp / split / kind
                folder.mkdir(parents=True)
                for i in range(count):
                    rng = random.Random(f"fowl:{seed}:{split}:{kind}:{i}")
                    draw_bird(kind, rng, size).save(folder / f"{i:04d}.png", format="PNG", optimize=False)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the dataset should look like any other directory
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a synthetic chickens-vs-turkeys ImageFolder dataset.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--val-per-class", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = generate(args.out_dir, args.train_per_class, args.val_per_class, args.size, args.seed)
    except (FileExistsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = 2 * (args.train_per_class + args.val_per_class)
    print(f"wrote {total} images ({', '.join(CLASSES)}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
