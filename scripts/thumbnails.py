"""Make workflows/<name>.jpg for every workflow in workflows/ from a real run of it (scripts/txt2vid.py).

    .venv/bin/python scripts/thumbnails.py            # every workflow, on the local ComfyUI txt2vid.py starts
    .venv/bin/python scripts/thumbnails.py --steps 20 # with real weights in .demo/models/, for real pictures
    .venv/bin/python scripts/thumbnails.py workflows/txt2vid.json   # only these

The middle frame of each run's animation (its WEBP or MP4), scaled to 256 px. With the random-weight stand-ins txt2vid.py
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


def middle_frame(path):
    """The middle frame of an animated WEBP, or of an .mp4 (read with opencv), as an RGB PIL image."""
    if not path.endswith(".mp4"):
        with Image.open(path) as image:
            image.seek(image.n_frames // 2)
            return image.convert("RGB")
    import cv2
    video = cv2.VideoCapture(path)
    try:
        video.set(cv2.CAP_PROP_POS_FRAMES, int(video.get(cv2.CAP_PROP_FRAME_COUNT)) // 2)
        ok, frame = video.read()
    finally:
        video.release()
    if not ok:
        sys.exit(f"{path}: no frame could be read")
    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


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
            (animation,) = glob.glob(os.path.join(out, "*.webp")) + glob.glob(os.path.join(out, "*.mp4"))
            frame = middle_frame(animation).resize((args.size, args.size), Image.NEAREST)
        thumbnail = os.path.splitext(workflow)[0] + ".jpg"
        frame.save(thumbnail, quality=90)
        print(f"wrote {txt2vid.show(thumbnail)}")


if __name__ == "__main__":
    main()
