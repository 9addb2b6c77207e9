"""Make workflows/<name>.jpg for every workflow in workflows/ from a real run of it (scripts/txt2vid.py).

    .venv/bin/python scripts/thumbnails.py            # every workflow, on the local ComfyUI txt2vid.py starts
    .venv/bin/python scripts/thumbnails.py --steps 20 # with real weights in .demo/models/, for real pictures
    .venv/bin/python scripts/thumbnails.py workflows/txt2vid.json   # only these

The middle frame of each run's animation, scaled to 256 px. With the random-weight stand-ins txt2vid.py
writes when no real files are installed, the pictures are noise: the run is real, the weights are not.
"""
import argparse
import glob
import os
import sys
import tempfile

from PIL import Image

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS)
import txt2vid  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("workflows", nargs="*", help="workflow files (default: every one in workflows/)")
    args = p.parse_args()
    for workflow in args.workflows or sorted(glob.glob(os.path.join(txt2vid.REPO, "workflows", "*.json"))):
        with tempfile.TemporaryDirectory() as out:
            if txt2vid.main(["--workflow", workflow, "--steps", str(args.steps), "--output", out]) != 0:
                sys.exit(f"{workflow} did not run")
            (animation,) = glob.glob(os.path.join(out, "*.webp"))
            with Image.open(animation) as image:
                image.seek(image.n_frames // 2)
                frame = image.convert("RGB").resize((args.size, args.size), Image.NEAREST)
        thumbnail = os.path.splitext(workflow)[0] + ".jpg"
        frame.save(thumbnail, quality=90)
        print(f"wrote {txt2vid.show(thumbnail)}")


if __name__ == "__main__":
    main()
