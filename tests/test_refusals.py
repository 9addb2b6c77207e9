"""Bad input is refused with a message that names the fix, through real ComfyUI execution: a pickle that asks to run
code (in each wording torch uses), a motion-module name that is not in the folder, a damaged file whose keys stop
half-way, a trainer video folder outside the input folder. Also: the combo of files of one kind reads each file once
while the folder stays the same, and the motion module's settings count its calls whatever core copies."""
import copy
import os

import pytest
import torch

import builders
from conftest import PromptFailed

TINY = (32, 32, 64, 64)


class System:
    """Unpickling this calls os.system (torch 2.14: "unsupported GLOBAL posix.system whose module posix is blocked")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Eval:
    """Unpickling this calls builtins.eval (torch: "Unsupported global: GLOBAL builtins.eval")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w')",))


def load_prompt(name):
    return {"1": {"class_type": "AnimateDiffLoadMotionModule", "inputs": {"motion_module": name}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


@pytest.mark.parametrize("payload", [System, Eval])
def test_a_pickle_that_runs_code_is_refused_as_such(comfy, tmp_path, payload):
    directory = os.path.join(comfy.models, "animatediff_models")
    os.makedirs(directory, exist_ok=True)
    marker = str(tmp_path / "ran")
    name = f"code_{payload.__name__.lower()}.ckpt"
    torch.save({"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": payload(marker)},
               os.path.join(directory, name), pickle_protocol=2)
    with pytest.raises(PromptFailed) as failure:
        comfy.run(load_prompt(name))
    message = str(failure.value)
    assert f"Refused to load '{name}': it is a pickle that asks to run Python code" in message, message
    assert "damaged" not in message and not os.path.exists(marker)


def test_a_motion_module_that_is_not_in_the_folder_names_the_folder(comfy):
    with pytest.raises(PromptFailed) as failure:
        comfy.run(load_prompt("not_there.safetensors"))
    message = str(failure.value)
    # refused at validation like any combo value, or by the loader with the folder and the fix
    assert "not_there.safetensors" in message and (
        "models/animatediff_models" in message or "not in list" in message.lower()), message
    assert "FileNotFoundError" not in message


def test_a_file_cut_off_half_way_is_refused_readably(comfy):
    sd = builders.motion_module_sd("v2", channels=TINY)
    damaged = {k: v for k, v in sd.items() if not k.startswith("down_blocks.0.")}  # its first level is gone
    name = "cut_off.safetensors"
    builders.save_file(damaged, os.path.join(comfy.models, "animatediff_models", name))
    with pytest.raises(PromptFailed) as failure:
        comfy.run(load_prompt(name))
    message = str(failure.value)
    assert "incomplete AnimateDiff file" in message and "download it again" in message, message
    assert "KeyError" not in message


@pytest.mark.parametrize("folder", ["../models", "/etc", "pan/../../models"])
def test_the_trainer_reads_no_folder_outside_the_input_folder(comfy, pack, folder):
    with pytest.raises(pack.nodes.files.AnimateDiffError, match="is outside ComfyUI's input folder"):
        pack.nodes.training.input_folder(folder)


def test_the_trainer_reads_folders_inside_the_input_folder(comfy, pack):
    import folder_paths
    inside = os.path.join(os.path.realpath(folder_paths.get_input_directory()), "clips", "pan")
    assert pack.nodes.training.input_folder("clips/pan") == inside
    assert pack.nodes.training.input_folder("clips/../clips/pan") == inside


def test_a_kind_listing_reads_each_file_once_while_the_folder_stays_the_same(comfy, pack, monkeypatch):
    files = pack.nodes.files
    folder = os.path.join(comfy.models, "loras")
    os.makedirs(folder, exist_ok=True)
    builders.save_file(builders.v3_adapter_sd(rank=4), os.path.join(folder, "listing_adapter.ckpt"))
    builders.save_file(builders.motion_lora_sd(TINY, rank=4), os.path.join(folder, "listing_lora.ckpt"))
    first = files.files_of_kind(("loras",), "domain_adapter")
    assert "listing_adapter.ckpt" in first and "listing_lora.ckpt" not in first
    reads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a) or pytest.fail("read again"))
    assert files.files_of_kind(("loras",), "domain_adapter") == first
    monkeypatch.undo()
    assert reads == []
    builders.save_file(builders.v3_adapter_sd(rank=4, seed=1), os.path.join(folder, "listing_adapter_2.ckpt"))
    import folder_paths
    folder_paths.filename_list_cache.pop("loras", None)
    assert files.files_of_kind(("loras",), "domain_adapter") == sorted(first + ["listing_adapter_2.ckpt"])


def test_settings_count_calls_through_deep_copies_of_the_options(comfy, pack):
    motion = pack.nodes.motion
    settings = motion.Settings("mm", "v2", 32, 1.0, 1.0, ())
    options = {"transformer_options": {"animatediff": settings}}
    deep = copy.deepcopy(options)
    assert deep["transformer_options"]["animatediff"] is settings and copy.copy(settings) is settings
    deep["transformer_options"]["animatediff"].calls.add()
    assert settings.calls.count == 1
