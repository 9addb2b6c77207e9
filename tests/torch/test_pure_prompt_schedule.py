"""The prompt schedule (motion_modules.prompt_schedule), pure: the keyframe text users paste, the lines it refuses,
and how much of each keyframe's prompt each frame takes."""
import pytest
import torch

from motion_modules import prompt_schedule

SCHEDULE = '''{
    "0": "a forest in spring",
    "4" :"a forest in (winter:1.2), \\"snow\\"",

    "10": "a desert"
}'''


def test_the_schedule_format_users_paste():
    assert prompt_schedule.parse(SCHEDULE) == [(0, "a forest in spring"), (4, 'a forest in (winter:1.2), "snow"'),
                                               (10, "a desert")]
    assert prompt_schedule.parse('"3": "late start"') == [(3, "late start")]


@pytest.mark.parametrize("text, message", [
    ('"0": "a",\n"8" "b"', "line 2: '\"8\" \"b\"' is not a keyframe"),
    ('"0": "a",\n\n"0": "b"', "line 3: frame 0 has a prompt already"),
    ("a forest", "line 1: 'a forest' is not a keyframe"),
    ("\n{\n}\n", "has no keyframes"),
])
def test_bad_schedule_text_names_the_line(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prompt_schedule.parse(text)


def test_per_frame_weights():
    linear = prompt_schedule.weights([2, 6, 20], 10, "linear")
    expected = torch.zeros(10, 3)
    expected[:3, 0] = 1  # before and at the first keyframe: its prompt
    for f in range(3, 7):
        expected[f, 0], expected[f, 1] = (6 - f) / 4, (f - 2) / 4
    for f in range(7, 10):  # towards a keyframe past the last frame
        expected[f, 1], expected[f, 2] = (20 - f) / 14, (f - 6) / 14
    torch.testing.assert_close(linear, expected, rtol=0, atol=1e-6)
    hold = prompt_schedule.weights([2, 6, 20], 10, "hold")
    assert hold.argmax(1).tolist() == [0] * 6 + [1] * 4 and torch.equal(hold.sum(1), torch.ones(10))
    assert prompt_schedule.weights([0, 4], 8, "linear")[4:].argmax(1).tolist() == [1] * 4  # after the last: held
