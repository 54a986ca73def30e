"""Speed peers for bench_cnn3d.py: two published whole-body CT segmenters rebuilt with RANDOM weights on CPU.

Their trained weights cannot be had here, so only their speed and memory are compared; the label maps they
produce are meaningless. Each peer runs the whole path a user would see, timed phase by phase:

    resample the scan to 3 mm  ->  normalise  ->  sliding-window inference  ->  softmax + argmax  ->
    nearest-neighbour resampling of the labels back onto the input grid

Requires the optional extra `pip install -e ".[peers]"` (monai, dynamic-network-architectures); `missing()`
says what is absent, and nothing here imports torch or the peers at module import time.

Where each setting comes from (quoted in the benchmark's printed header too):

(1) MONAI SegResNet, model-zoo bundle "wholeBody_ct_segmentation", 3 mm (low-resolution) variant
    - Project-MONAI/model-zoo, models/wholeBody_ct_segmentation/configs/inference.json (commit 29c314e7):
      "displayable_configs": {"highres": true, "sw_overlap": 0.25, "sw_batch_size": 1};
      "pixdim": [1.5]*3 if highres else [3.0]*3, "modelname": model.pt if highres else model_lowres.pt;
      network_def SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=32,
      blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2);
      preprocessing LoadImaged, EnsureChannelFirstd, Orientationd(RAS), Spacingd(pixdim, mode=bilinear),
      NormalizeIntensityd(nonzero=True), ScaleIntensityd(minv=-1.0, maxv=1.0);
      inferer SlidingWindowInferer(roi_size=[96, 96, 96], sw_batch_size, overlap, padding_mode=replicate,
      mode=gaussian); postprocessing Activationsd(softmax=True), AsDiscreted(argmax=True),
      Invertd(nearest_interp=True).
    - The same values, hard-coded for 3 mm, in models/wholeBody_ct_segmentation/configs_3mm/inference.json
      (commit 5ce7d296): pixdim [3.0, 3.0, 3.0], roi_size [96, 96, 96], sw_batch_size 1, overlap 0.25.
    - The bundle's evaluator sets "amp": true; that is CUDA autocast, a no-op on CPU, so float32 here.

(2) nnU-Net PlainConvUNet as run by TotalSegmentator `--task total --fast` (3 mm)
    - wasserth/TotalSegmentator, totalsegmentator/python_api.py: for task "total" with fast:
      task_id = 297, resample = 3.0, trainer = "nnUNetTrainer_4000epochs_NoMirroring", model "3d_fullres",
      folds [0]; the plans are "nnUNetPlans" (Dataset297_TotalSegmentator_total_3mm_1559subj).
    - wasserth/TotalSegmentator, totalsegmentator/nnunet.py: nnUNet_predict_image resamples the input to
      3 mm with change_spacing(order=3), uses step_size = 0.5 (0.8 only when resample < 3.0), and
      nnUNetv2_predict builds nnUNetPredictor(tile_step_size=step_size, use_gaussian=True,
      use_mirroring=not disable_tta) with tta=False by default (so no mirroring; the trainer is a
      NoMirroring one anyway); on CPU it calls torch.set_num_threads(cpu_count); the labels go back to the
      input grid with change_spacing(order=0). (nnU-Net's predict_logits_from_preprocessed_data then caps
      torch threads at nnUNet_def_n_proc, default 8; the benchmark gives every method all cores, which is
      the same on machines with up to 8 cores.)
    - Plans of Dataset297 (3d_fullres), as extracted from its plans.json by aluminumio/shoulder_segmenter,
      script/golden/nnunet_architecture.yaml (commit 9e7fa7f5), written by that repo's
      script/export_totalsegmentator.py from PlansManager(...).get_configuration("3d_fullres"):
      PlainConvUNet, n_stages 5, features_per_stage [32, 64, 128, 256, 320], kernel_sizes 3x3x3 at every
      stage, strides [1,1,1] then [2,2,2] x4, n_conv_per_stage [2]*5, n_conv_per_stage_decoder [2]*4,
      conv_bias true, norm InstanceNorm3d(eps=1e-5, affine=True), nonlin LeakyReLU(inplace=True) (default
      negative slope 0.01), output_channels 118, patch_size [112, 112, 128], spacing [3.0, 3.0, 3.0],
      CTNormalization clip [-1004.0, 1588.0], mean -50.38697721419439, std 503.39235619144.
      Patch size and class count agree with msahamed/total_segmentaor_optimization,
      TOTALSEGMENTATOR_TEST_DATASETS.md ("Patch Size [112, 112, 128]", "118 anatomical labels").
    - MIC-DKFZ/nnUNet nnunetv2/inference/sliding_window_prediction.py: compute_gaussian(sigma_scale=1/8,
      value_scaling_factor=10, float16, zeros replaced by the smallest non-zero value) and
      compute_steps_for_sliding_window (n = ceil((size - patch) / (patch * step)) + 1 evenly spaced tiles);
      nnunetv2/inference/predict_from_raw_data.py: pad to the patch size (constant 0), accumulate
      logits and weights in float16, divide, revert padding; then export_prediction.py: logits -> float,
      softmax over classes, argmax. Implemented here in a few lines (no nnunetv2 dependency), following
      that code.

Deliberate simplifications (all of them make the peers a little faster than the real tools, never slower):
resampling to 3 mm uses torch trilinear interpolation for both peers (TotalSegmentator uses a third-order
spline, MONAI's Spacingd an affine grid resample); file reading/writing, nnU-Net's crop-to-nonzero (a no-op
on a padded CT) and the tools' start-up are not timed; the reorientation to RAS is a no-op on the benchmark
scan (it is written RAS+).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

PEERS_EXTRA = 'pip install -e ".[peers]"   (monai, dynamic-network-architectures)'


@dataclass(frozen=True)
class PeerSpec:
    key: str
    title: str
    module: str                  # what must be importable
    spacing_mm: float
    patch: tuple[int, int, int]  # in the peer's own axis order (see axis_note)
    n_classes: int
    sliding: str
    axis_note: str
    network: dict = field(default_factory=dict)
    sources: tuple[str, ...] = ()


MONAI_SEGRESNET = PeerSpec(
    key="monai_segresnet",
    title="MONAI SegResNet, wholeBody_ct_segmentation bundle, 3 mm (low-res) configuration",
    module="monai",
    spacing_mm=3.0,
    patch=(96, 96, 96),
    n_classes=105,
    sliding="monai.inferers.sliding_window_inference(roi 96^3, sw_batch_size=1, overlap=0.25, "
            "mode='gaussian' (sigma 0.125 x roi), padding_mode='replicate')",
    axis_note="RAS (x, y, z) as MONAI's Orientationd(RAS) gives",
    network=dict(spatial_dims=3, in_channels=1, out_channels=105, init_filters=32, blocks_down=[1, 2, 2, 4],
                 blocks_up=[1, 1, 1], dropout_prob=0.2),
    sources=("Project-MONAI/model-zoo models/wholeBody_ct_segmentation/configs/inference.json (29c314e7: "
             "network_def, pixdim 3.0 when highres=false, inferer, pre/postprocessing)",
             "Project-MONAI/model-zoo models/wholeBody_ct_segmentation/configs_3mm/inference.json (5ce7d296: "
             "pixdim [3,3,3], roi [96,96,96], sw_batch_size 1, overlap 0.25)"),
)

NNUNET_TOTALSEG_FAST = PeerSpec(
    key="nnunet_totalseg_fast",
    title="nnU-Net PlainConvUNet, TotalSegmentator --fast (task 297, total 3 mm)",
    module="dynamic_network_architectures",
    spacing_mm=3.0,
    patch=(112, 112, 128),
    n_classes=118,
    sliding="own implementation of nnU-Net v2's sliding window: tile_step_size 0.5, Gaussian weights "
            "(sigma 1/8 patch, x10, float16), float16 accumulation, no mirroring",
    axis_note="(z, y, x), the array order nnU-Net's SimpleITK reader gives; for the benchmark scan the "
              "tile count is the same in either order",
    network=dict(input_channels=1, n_stages=5, features_per_stage=[32, 64, 128, 256, 320],
                 kernel_sizes=[[3, 3, 3]] * 5, strides=[[1, 1, 1]] + [[2, 2, 2]] * 4,
                 n_conv_per_stage=[2] * 5, num_classes=118, n_conv_per_stage_decoder=[2] * 4, conv_bias=True,
                 norm="InstanceNorm3d(eps=1e-5, affine=True)", nonlin="LeakyReLU(inplace=True)",
                 deep_supervision=False),
    sources=("wasserth/TotalSegmentator totalsegmentator/python_api.py (fast: task_id 297, resample 3.0, "
             "trainer nnUNetTrainer_4000epochs_NoMirroring, 3d_fullres, fold 0)",
             "wasserth/TotalSegmentator totalsegmentator/nnunet.py (step_size 0.5 at 3 mm, use_gaussian=True, "
             "use_mirroring=not disable_tta with tta=False, torch threads = cpu_count on CPU, order-3 resample "
             "in, order-0 out)",
             "Dataset297 plans (3d_fullres) via aluminumio/shoulder_segmenter "
             "script/golden/nnunet_architecture.yaml (9e7fa7f5); patch/classes also in "
             "msahamed/total_segmentaor_optimization TOTALSEGMENTATOR_TEST_DATASETS.md",
             "MIC-DKFZ/nnUNet nnunetv2/inference/sliding_window_prediction.py, predict_from_raw_data.py"),
)

# nnU-Net CTNormalization values from the Dataset297 plans (foreground_intensity_properties_per_channel)
NNUNET_CT_CLIP = (-1004.0, 1588.0)
NNUNET_CT_MEAN, NNUNET_CT_STD = -50.38697721419439, 503.39235619144

PEERS: dict[str, PeerSpec] = {"monai": MONAI_SEGRESNET, "nnunet": NNUNET_TOTALSEG_FAST}


def missing(key: str) -> str | None:
    """None if the peer can run here, else the module that is missing."""
    import importlib.util

    mod = PEERS[key].module
    for m in ("torch", mod):
        if importlib.util.find_spec(m) is None:
            return m
    return None


# ----------------------------------------------------------------------------------------------------------
# networks (random weights)
# ----------------------------------------------------------------------------------------------------------
def build_network(key: str, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    if key == "monai":
        from monai.networks.nets import SegResNet

        net = SegResNet(**MONAI_SEGRESNET.network)
    elif key == "nnunet":
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        a = NNUNET_TOTALSEG_FAST.network
        net = PlainConvUNet(a["input_channels"], a["n_stages"], a["features_per_stage"], torch.nn.Conv3d,
                            a["kernel_sizes"], a["strides"], a["n_conv_per_stage"], a["num_classes"],
                            a["n_conv_per_stage_decoder"], conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                            norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                            nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    else:
        raise KeyError(key)
    return net.eval()


def n_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# ----------------------------------------------------------------------------------------------------------
# shared steps
# ----------------------------------------------------------------------------------------------------------
def grid_shape(shape, spacing_mm, target_mm: float) -> tuple[int, int, int]:
    """Shape of the scan's field of view on a `target_mm` grid (rounded, as TotalSegmentator's change_spacing)."""
    return tuple(max(1, int(round(n * s / target_mm))) for n, s in zip(shape, spacing_mm))


def resample_to(array: np.ndarray, spacing_mm, target_mm: float):
    """(1, 1, X, Y, Z) float32 tensor of the scan on the target grid (trilinear)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)[None, None]
    return F.interpolate(x, size=grid_shape(array.shape, spacing_mm, target_mm), mode="trilinear",
                         align_corners=False)


def labels_back(labels, shape) -> np.ndarray:
    """Nearest-neighbour resampling of a (X, Y, Z) uint8 label tensor onto the input grid."""
    import torch.nn.functional as F

    return F.interpolate(labels[None, None], size=tuple(shape), mode="nearest")[0, 0].numpy()


# ----------------------------------------------------------------------------------------------------------
# (1) MONAI bundle path
# ----------------------------------------------------------------------------------------------------------
def run_monai(net, array: np.ndarray, spacing_mm, phases: dict) -> np.ndarray:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import NormalizeIntensity, ScaleIntensity

    spec = MONAI_SEGRESNET
    with torch.inference_mode():
        t = time.perf_counter()
        x = resample_to(array, spacing_mm, spec.spacing_mm)
        phases["resample_in"] = time.perf_counter() - t

        t = time.perf_counter()
        x = NormalizeIntensity(nonzero=True)(x[0])          # channel-first (1, X, Y, Z), as the bundle's dict
        x = ScaleIntensity(minv=-1.0, maxv=1.0)(x)[None]    # transforms see it; batch dim added back
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)   # plain tensor from MetaTensor
        phases["normalise"] = time.perf_counter() - t

        t = time.perf_counter()
        logits = sliding_window_inference(x, roi_size=spec.patch, sw_batch_size=1, predictor=net, overlap=0.25,
                                          mode="gaussian", padding_mode="replicate")
        logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
        phases["sliding_window"] = time.perf_counter() - t
        phases["tiles"] = _monai_tiles(x.shape[2:], spec.patch, 0.25)

        t = time.perf_counter()
        labels = torch.softmax(logits[0], dim=0).argmax(dim=0).to(torch.uint8)
        del logits
        phases["softmax_argmax"] = time.perf_counter() - t

        t = time.perf_counter()
        out = labels_back(labels, array.shape)
        phases["resample_out"] = time.perf_counter() - t
    return out


def _monai_tiles(size, roi, overlap) -> int:
    n = 1
    for s, r in zip(size, roi):
        interval = max(int(r * (1 - overlap)), 1)
        n *= 1 if s <= r else math.ceil((s - r) / interval) + 1
    return n


# ----------------------------------------------------------------------------------------------------------
# (2) TotalSegmentator --fast path (nnU-Net v2 sliding window, re-implemented)
# ----------------------------------------------------------------------------------------------------------
def nnunet_gaussian(tile, sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10.0):
    """nnU-Net v2's compute_gaussian (float16, no zeros)."""
    import torch
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tile)
    tmp[tuple(i // 2 for i in tile)] = 1
    g = torch.from_numpy(gaussian_filter(tmp, [i * sigma_scale for i in tile], 0, mode="constant", cval=0))
    g = (g / torch.max(g) * value_scaling_factor).to(torch.float16)
    g[g == 0] = torch.min(g[g != 0])
    return g


def nnunet_steps(image_size, tile, step: float) -> list[list[int]]:
    """nnU-Net v2's compute_steps_for_sliding_window."""
    steps = []
    for i, k in zip(image_size, tile):
        n = int(np.ceil((i - k) / (k * step))) + 1
        size = (i - k) / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(size * j)) for j in range(n)])
    return steps


def run_nnunet(net, array: np.ndarray, spacing_mm, phases: dict) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    spec = NNUNET_TOTALSEG_FAST
    tile = spec.patch
    with torch.inference_mode():
        t = time.perf_counter()
        x = resample_to(array, spacing_mm, spec.spacing_mm)[0]     # (1, X, Y, Z)
        phases["resample_in"] = time.perf_counter() - t

        t = time.perf_counter()
        x = x.permute(0, 3, 2, 1).contiguous()                     # nnU-Net's (c, z, y, x) array order
        x.clamp_(*NNUNET_CT_CLIP).sub_(NNUNET_CT_MEAN).div_(max(NNUNET_CT_STD, 1e-8))  # CTNormalization
        phases["normalise"] = time.perf_counter() - t

        t = time.perf_counter()
        size = x.shape[1:]
        pad = [max(0, k - s) for s, k in zip(size, tile)]          # pad_nd_image: centred, constant 0
        lo = [p // 2 for p in pad]
        if any(pad):
            flat = []
            for p, l in reversed(list(zip(pad, lo))):
                flat += [l, p - l]
            x = F.pad(x, flat, mode="constant", value=0.0)
        steps = nnunet_steps(x.shape[1:], tile, 0.5)
        gaussian = nnunet_gaussian(tile)
        logits = torch.zeros((spec.n_classes, *x.shape[1:]), dtype=torch.half)
        weights = torch.zeros(x.shape[1:], dtype=torch.half)
        n_tiles = 0
        for sx in steps[0]:
            for sy in steps[1]:
                for sz in steps[2]:
                    sl = (slice(sx, sx + tile[0]), slice(sy, sy + tile[1]), slice(sz, sz + tile[2]))
                    pred = net(x[(slice(None), *sl)][None].contiguous())[0]   # no mirroring
                    pred *= gaussian
                    logits[(slice(None), *sl)] += pred
                    weights[sl] += gaussian
                    n_tiles += 1
        torch.div(logits, weights, out=logits)
        logits = logits[(slice(None), *(slice(l, l + s) for l, s in zip(lo, size)))]
        phases["sliding_window"] = time.perf_counter() - t
        phases["tiles"] = n_tiles

        t = time.perf_counter()
        labels = torch.softmax(logits.float(), dim=0).argmax(dim=0).to(torch.uint8)
        del logits
        phases["softmax_argmax"] = time.perf_counter() - t

        t = time.perf_counter()
        out = labels_back(labels.permute(2, 1, 0).contiguous(), array.shape)   # back to (x, y, z), input grid
        phases["resample_out"] = time.perf_counter() - t
    return out


RUNNERS = {"monai": run_monai, "nnunet": run_nnunet}


def tiles_for(key: str, shape, spacing_mm) -> tuple[tuple[int, int, int], int]:
    """(3 mm grid shape, number of sliding-window tiles) the peer will run on a scan of this shape."""
    spec = PEERS[key]
    g = grid_shape(shape, spacing_mm, spec.spacing_mm)
    if key == "monai":
        return g, _monai_tiles(g, spec.patch, 0.25)
    gz = tuple(reversed(g))
    padded = [max(s, k) for s, k in zip(gz, spec.patch)]
    return g, int(np.prod([len(s) for s in nnunet_steps(padded, spec.patch, 0.5)]))


def warm_up(net) -> None:
    """One small forward pass (32^3): thread pool and kernel start-up, so the timed run is not the first call."""
    import torch

    with torch.inference_mode():
        net(torch.zeros((1, 1, 32, 32, 32)))
