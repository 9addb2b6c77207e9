"""Train AnimateDiff's three stages on a folder of videos, with the same code as the Train AnimateDiff MotionLoRA
node (the pack's nodes/training.py, on ComfyUI's own model loading, patching and noise schedules).

  1. domain_adapter: a LoRA on the image model's spatial attention, trained on single frames of the videos;
     saved in the v3 domain-adapter layout (v3_sd15_adapter.ckpt), for Apply AnimateDiff Domain Adapter.
  2. motion_module: the motion module, trained on clips with the image model (and --adapter) frozen; a new
     one (zero proj_out, as in the paper) unless --motion-module gives one to continue; saved in the v3 layout
     (32 positions, or v1 with --positions 24), for Load AnimateDiff Motion Module.
  3. motion_lora: LoRAs on a motion module's temporal attention, trained on clips of one camera move; saved in
     the MotionLoRA layout (v2_lora_*.ckpt), for Load AnimateDiff MotionLoRA.

    python scripts/train.py domain_adapter --checkpoint sd15.safetensors --videos clips/ --output adapter.safetensors
    python scripts/train.py motion_module --checkpoint sd15.safetensors --adapter adapter.safetensors \\
        --videos clips/ --output mm.safetensors --state mm_state.pt --save-every 500
    python scripts/train.py motion_lora --checkpoint sd15.safetensors --motion-module mm_sd_v15_v2.ckpt \\
        --videos pan_left/ --prompt "a city street" --output pan_left.safetensors

--state keeps the training state (weights, optimizer, step) and resumes from it when it exists. On a GPU:
--precision fp16/bf16 (autocast) and --gradient-checkpointing. ComfyUI is found and loaded as the tests find
it (scripts/comfyui_path.py: $COMFYUI_PATH, the ComfyUI this pack sits in, or .comfyui/ComfyUI).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import comfyui_path  # noqa: E402

STAGES = ("domain_adapter", "motion_module", "motion_lora")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--checkpoint", required=True, help="the image model: an SD1.5 or SDXL checkpoint file")
    p.add_argument("--videos", required=True, help="a folder of video files (read with opencv)")
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    p.add_argument("--motion-module", help="motion_lora: the motion module to train on (required); "
                                           "motion_module: a module to continue training")
    p.add_argument("--adapter", help="a domain adapter applied (frozen) while training stages 2 and 3")
    p.add_argument("--adapter-strength", type=float, default=1.0)
    p.add_argument("--prompt", default="", help="the prompt every clip is trained with (default: empty)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--stride", type=int, default=1, help="use every n-th frame of the videos (the paper: 4)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--clip-length", type=int, default=16,
                   help="frames per clip (stage 1: frames per step, taken independently)")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (stages 1 and 3)")
    p.add_argument("--positions", type=int, choices=(24, 32), default=32,
                   help="frame positions of a new motion module: 32 = v3 layout, 24 = v1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", help="training-state file: written every --save-every steps and at the end; "
                                   "training resumes from it when it exists")
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="autocast dtype")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet blocks in the backward")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    args = p.parse_args(argv)
    if args.stage == "motion_lora" and not args.motion_module:
        p.error("motion_lora needs --motion-module (the module the MotionLoRA is for, e.g. mm_sd_v15_v2.ckpt)")
    return args


def main(argv=None):
    args = parse_args(argv)
    comfyui_path.use_comfyui(cpu=args.cpu)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    nodes = comfyui_path.load_pack().nodes
    import comfy.sd
    import torch
    motion, lora, training = nodes.motion, nodes.lora, nodes.training
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        args.checkpoint, output_vae=True, output_clip=True, embedding_directory=None)[:3]
    with torch.no_grad():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(args.prompt))
        latents = training.encode(vae, training.read_videos(args.videos, args.width, args.height, args.stride))
    print(f"{len(latents)} videos, {sum(v.shape[0] for v in latents)} frames at {args.width}x{args.height}")
    module = None
    if args.motion_module:
        module = motion.load_motion_module(args.motion_module, os.path.basename(args.motion_module))
    elif args.stage == "motion_module":
        module = motion.new_motion_module(model, args.positions, args.seed)
    if args.adapter and args.stage != "domain_adapter":
        model = lora.apply_domain_adapter(model, args.adapter, os.path.basename(args.adapter), args.adapter_strength)
    weights, losses = training.train(
        model, args.stage, latents, positive, args.steps, args.lr, args.clip_length, args.seed,
        motion_module=module, rank=args.rank, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint=args.state, checkpoint_every=args.save_every)
    if args.stage == "motion_module":
        weights = {k: v.float().contiguous() for k, v in module.patcher.model.state_dict().items()}
    training.save(weights, args.output, stage=args.stage, checkpoint=os.path.basename(args.checkpoint),
                  steps=args.steps, learning_rate=args.lr, clip_length=args.clip_length, seed=args.seed,
                  final_loss=f"{losses[-1]:.6f}" if losses else "")
    print(f"wrote {args.output} ({len(weights)} tensors); loss {losses[0]:.4f} -> {losses[-1]:.4f} over "
          f"{len(losses)} steps" if losses else f"wrote {args.output}")


if __name__ == "__main__":
    main()
