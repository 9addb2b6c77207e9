"""FreeInit (Wu et al. 2023, arXiv 2312.07537): the low frequencies of a video's initial noise decide its layout
and how consistent its frames are, and sampling from pure noise leaves them weak. FreeInit samples, diffuses
the result back to the first sigma with the same initial noise, keeps that latent's low frequencies over
(frames, height, width), takes the high frequencies from fresh noise, and samples again.

The filters are the paper's, on the normalised frequencies of the 3D FFT (1 is the Nyquist frequency) with the
spatial stop frequency D0 = `spatial` and the temporal one `temporal`:
D^2 = (f_t * spatial / temporal)^2 + f_h^2 + f_w^2 (an ellipsoid reaching `temporal` on the frame axis), and
  gaussian     H = exp(-D^2 / (2 D0^2))
  butterworth  H = 1 / (1 + (D^2 / D0^2)^n), order n = 4
  ideal        H = 1 where D <= D0, else 0
  box          H = 1 where |f_t| <= temporal and |f_h|, |f_w| <= spatial, else 0
"""
import torch

FILTERS = ["butterworth", "gaussian", "ideal", "box"]
BUTTERWORTH_ORDER = 4


def low_pass_filter(frames, height, width, kind, spatial, temporal):
    """H [frames, height, width] in torch.fft.fftn's (unshifted) layout: what share of each frequency is kept."""
    f_t, f_h, f_w = torch.meshgrid(*(torch.fft.fftfreq(n) * 2 for n in (frames, height, width)), indexing="ij")
    if kind == "box":
        return ((f_t.abs() <= temporal) & (f_h.abs() <= spatial) & (f_w.abs() <= spatial)).float()
    d2 = (f_t * spatial / temporal) ** 2 + f_h ** 2 + f_w ** 2
    if kind == "gaussian":
        return torch.exp(-d2 / (2 * spatial ** 2))
    if kind == "ideal":
        return (d2 <= spatial ** 2).float()
    return 1 / (1 + (d2 / spatial ** 2) ** BUTTERWORTH_ORDER)


def low_pass(x, h):
    """x [frames, channels, height, width] filtered by h [frames, height, width] over frames, height and width."""
    spectrum = torch.fft.fftn(x.float(), dim=(0, 2, 3))
    return torch.fft.ifftn(spectrum * h[:, None].to(x.device), dim=(0, 2, 3)).real.to(x.dtype)


def reinitialise(latent, noise, fresh, h):
    """The next iteration's (latent, noise). A sampler starts from a * latent + s * noise (its scales at the first
    sigma), which is then LPF(a * previous result + s * initial noise) + HPF(s * fresh noise)."""
    return low_pass(latent, h), low_pass(noise, h) + fresh - low_pass(fresh, h)
