"""FreeInit's filters (motion_modules.free_init), pure torch: each filter's frequency response against the paper's
formulas, and the reinitialisation it builds from them."""
import math

import pytest
import torch

from motion_modules import free_init


def paper_response(kind, ft, fh, fw, spatial, temporal):
    """The paper's filters at one normalised frequency (1 = Nyquist)."""
    d = math.sqrt((ft * spatial / temporal) ** 2 + fh ** 2 + fw ** 2)
    return {"gaussian": math.exp(-d ** 2 / (2 * spatial ** 2)),
            "butterworth": 1 / (1 + (d / spatial) ** 8),
            "ideal": float(d <= spatial),
            "box": float(abs(ft) <= temporal and abs(fh) <= spatial and abs(fw) <= spatial)}[kind]


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal", "box"])
def test_a_cosine_comes_out_scaled_by_the_papers_response(kind):
    frames, height, width, spatial, temporal = 16, 16, 24, 0.25, 0.4
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    seen = set()
    for kt, kh, kw in [(0, 0, 0), (1, 1, 0), (2, 0, 3), (3, 2, 1), (0, 3, 4), (5, 1, 1), (1, 6, 2), (8, 8, 12)]:
        signal = torch.cos(2 * math.pi * (kt * t / frames + kh * y / height + kw * x / width))
        signal = signal[:, None].repeat(1, 4, 1, 1)  # [frames, channels, height, width]
        out = free_init.low_pass(signal, free_init.low_pass_filter(frames, height, width, kind, spatial, temporal))
        gain = paper_response(kind, 2 * kt / frames, 2 * kh / height, 2 * kw / width, spatial, temporal)
        torch.testing.assert_close(out, gain * signal, rtol=0, atol=1e-5)
        seen.add(round(gain, 3))
    assert len(seen) >= 2  # both kept and (partly) removed frequencies were tried


def test_every_listed_filter_keeps_the_mean_and_the_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 12, 16, generator=g).half()
    for kind in free_init.FILTERS:
        h = free_init.low_pass_filter(8, 12, 16, kind, 0.25, 0.25)
        assert h.shape == (8, 12, 16) and h[0, 0, 0] == 1 and h.min() >= 0 and h.max() <= 1
        out = free_init.low_pass(x, h)
        assert out.dtype == torch.float16
        torch.testing.assert_close(out.float().mean(dim=(0, 2, 3)), x.float().mean(dim=(0, 2, 3)), atol=2e-3, rtol=0)


def test_reinitialise_takes_the_low_frequencies_of_the_result_and_the_high_of_fresh_noise():
    g = torch.Generator().manual_seed(1)
    latent, noise, fresh = (torch.randn(8, 4, 12, 16, generator=g) for _ in range(3))
    h = free_init.low_pass_filter(8, 12, 16, "butterworth", 0.25, 0.25)
    start, new_noise = free_init.reinitialise(latent, noise, fresh, h)
    torch.testing.assert_close(start, free_init.low_pass(latent, h))
    # the noise's spectrum is H * noise + (1 - H) * fresh
    spectrum = torch.fft.fftn(new_noise, dim=(0, 2, 3))
    expected = (torch.fft.fftn(noise, dim=(0, 2, 3)) * h[:, None]
                + torch.fft.fftn(fresh, dim=(0, 2, 3)) * (1 - h[:, None]))
    torch.testing.assert_close(spectrum, expected, atol=1e-3, rtol=1e-4)
    everything = torch.ones_like(h)  # a filter that keeps everything: the result and the initial noise as they were
    kept, same = free_init.reinitialise(latent, noise, fresh, everything)
    torch.testing.assert_close(kept, latent, atol=1e-5, rtol=0)
    torch.testing.assert_close(same, noise, atol=1e-5, rtol=0)
