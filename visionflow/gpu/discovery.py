"""Finding the GPUs and MIG instances a worker can be pinned to, through NVML.

Each result is an :class:`InferenceSlot`: a whole GPU (MIG off) or one MIG instance, with the
UUID that ``CUDA_VISIBLE_DEVICES`` takes and the number of NVDEC engines it owns (MIG slices
of the A100 ``1g`` profiles own none, so decode must not be placed there).  ``nvml`` is the
``pynvml`` module (nvidia-ml-py) or an object with the same functions — tests feed recorded
answers of MIG layouts that cannot be switched on where they run.

Which slots are used (:func:`discover`):

1. :func:`scan` lists every GPU of the host.  NVML ignores ``CUDA_VISIBLE_DEVICES``, so
2. :func:`visible_slots` applies it the way CUDA reads it (the rules PyTorch's
   ``torch.cuda._parse_visible_devices`` reproduces): unset = every GPU; ``""`` = none;
   a comma-separated list kept in its order; either indices (each entry read like
   ``strtoul`` after trimming spaces, so ``"1gpu"`` is 1) or UUIDs / unique UUID prefixes
   of the kind of the first entry (``GPU-…`` or ``MIG-…``); the first entry that is
   invalid (negative, out of range, unknown or ambiguous UUID, other kind) ends the list;
   an entry naming a device twice makes the whole list name no device.  Indices are NVML
   indices (PCI bus order, as ``nvidia-smi`` numbers GPUs); CUDA numbers them the same way
   only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (its default, ``FASTEST_FIRST``, may put a
   faster model first), so a warning is logged when indices are used on a host with GPUs of
   different models without it.  A listed GPU with MIG on stands for its MIG instances; a
   ``MIG-`` UUID for that instance alone.
3. :func:`select_slots` applies ``workers.gpus`` (NVML indices, GPU or MIG UUIDs) to what is
   left, in the order listed, and raises :class:`~visionflow.errors.ConfigError` naming an
   entry that is unknown, hidden or listed twice, with the GPUs that exist.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from visionflow.errors import ConfigError

log = logging.getLogger("visionflow.gpu")
_T = TypeVar("_T")

#: NVDEC engines of a whole GPU, by name fragment (NVML has no direct query outside MIG).
NVDEC_BY_NAME = {
    "H100": 7,
    "H200": 7,
    "H20": 7,
    "A100": 5,
    "A30": 4,
    "L40": 3,
    "L4": 4,
    "A10": 1,
    "T4": 2,
    "B200": 7,
}


@dataclass(frozen=True)
class InferenceSlot:
    """Somewhere one inference worker (or decoder) can run."""

    uuid: str  # GPU-... or MIG-...: what CUDA_VISIBLE_DEVICES takes
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    parent_index: int
    memory_mb: int
    nvdecs: int
    is_mig: bool
    compute_capability: str
    parent_uuid: str = ""  # the whole GPU's UUID (its own UUID when MIG is off)

    @property
    def label(self) -> str:
        return f"gpu{self.parent_index}:{self.profile if self.is_mig else 'full'}"

    @property
    def profile(self) -> str:
        """The MIG profile (``"3g.40gb"``); empty for a whole GPU."""
        return self.name.split("MIG ")[-1] if self.is_mig else ""

    @property
    def placement(self) -> str:
        """Where a worker on this slot runs, for people: ``GPU 1 (H100 80GB HBM3, GPU-8f3a…)``."""
        if self.is_mig:
            return f"GPU {self.parent_index} MIG {self.profile} ({short_uuid(self.uuid)})"
        model = self.name.removeprefix("NVIDIA ")
        return f"GPU {self.parent_index} ({model}, {short_uuid(self.uuid)})"


@dataclass(frozen=True)
class PhysicalGpu:
    """One GPU of the host as NVML lists it, with the slots it offers."""

    index: int  # NVML index: PCI bus order, as nvidia-smi numbers GPUs
    uuid: str
    name: str
    mig_enabled: bool
    slots: tuple[InferenceSlot, ...]  # the GPU itself, or its MIG instances (maybe none)


def short_uuid(uuid: str, digits: int = 8) -> str:
    """``GPU-8f3a1b2c-…`` shortened to its kind and first ``digits`` characters."""
    kind, sep, rest = uuid.partition("-")
    if not sep or len(rest) <= digits:
        return uuid
    return f"{kind}-{rest[:digits]}…"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvdecs_of_gpu(nvml: Any, handle: Any, name: str) -> int:
    try:
        nvml.nvmlDeviceGetDecoderUtilization(handle)
    except Exception:  # NVML raises NotSupported on GPUs without NVDEC
        return 0
    for fragment, count in NVDEC_BY_NAME.items():
        if fragment in name:
            return count
    return 1


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # not MIG-capable
        return False
    return bool(current == nvml.NVML_DEVICE_MIG_ENABLE)


def scan(nvml: Any | None = None) -> list[PhysicalGpu]:
    """Every GPU of the host in NVML order, whatever ``CUDA_VISIBLE_DEVICES`` says."""
    if nvml is None:
        import pynvml  # nvidia-ml-py

        nvml = pynvml
    assert nvml is not None
    nvml.nvmlInit()
    try:
        gpus: list[PhysicalGpu] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            capability = f"{major}.{minor}"
            mig = _mig_enabled(nvml, handle)
            if mig:
                slots = _mig_slots(nvml, handle, index, capability, uuid)
            else:
                whole = InferenceSlot(
                    uuid=uuid,
                    name=name,
                    parent_index=index,
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) >> 20,
                    nvdecs=_nvdecs_of_gpu(nvml, handle, name),
                    is_mig=False,
                    compute_capability=capability,
                    parent_uuid=uuid,
                )
                slots = [whole]
            gpus.append(PhysicalGpu(index, uuid, name, mig, tuple(slots)))
        return gpus
    finally:
        nvml.nvmlShutdown()


def _mig_slots(
    nvml: Any, handle: Any, index: int, capability: str, parent_uuid: str
) -> list[InferenceSlot]:
    out = []
    for position in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, position)
        except Exception:  # NVML_ERROR_NOT_FOUND: an empty position
            continue
        attrs = nvml.nvmlDeviceGetAttributes(mig)
        out.append(
            InferenceSlot(
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                name=_text(nvml.nvmlDeviceGetName(mig)),
                parent_index=index,
                memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(mig).total) >> 20,
                nvdecs=int(attrs.decoderCount),
                is_mig=True,
                compute_capability=capability,
                parent_uuid=parent_uuid,
            )
        )
    return out


def discover(
    nvml: Any | None = None,
    *,
    gpus: Sequence[str | int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[InferenceSlot]:
    """The slots to use: every whole GPU (MIG off) and MIG instance (MIG on) in NVML order,
    less those ``CUDA_VISIBLE_DEVICES`` hides (in its order when set), then narrowed to
    ``gpus`` (``workers.gpus``) when given.  ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    found = scan(nvml)
    visible = visible_slots(
        found, env.get("CUDA_VISIBLE_DEVICES"), device_order=env.get("CUDA_DEVICE_ORDER")
    )
    return select_slots(found, visible, gpus)


# ---- CUDA_VISIBLE_DEVICES ------------------------------------------------------------------
_LEADING_INT = re.compile(r"[+-]?[0-9]+")


def _strtoul(entry: str) -> int:
    """The index CUDA reads from an entry: its leading integer, -1 when there is none."""
    match = _LEADING_INT.match(entry)
    return int(match.group()) if match else -1


def _uuid_matches(entry: str, candidates: Sequence[tuple[str, _T]]) -> list[_T]:
    """Candidates whose UUID is ``entry`` (exact match wins) or starts with it."""
    exact = [c for uuid, c in candidates if uuid == entry]
    return exact or [c for uuid, c in candidates if uuid.startswith(entry)]


def _uuid_candidates(
    kind: str, gpus: Sequence[PhysicalGpu]
) -> list[tuple[str, PhysicalGpu | InferenceSlot]]:
    if kind == "GPU-":
        return [(g.uuid, g) for g in gpus]
    return [(s.uuid, s) for g in gpus for s in g.slots if s.is_mig]


def visible_slots(
    gpus: Sequence[PhysicalGpu], value: str | None, *, device_order: str | None = None
) -> list[InferenceSlot]:
    """The slots ``CUDA_VISIBLE_DEVICES=value`` lets CUDA see, in its order (see the module)."""
    if value is None:
        return [slot for gpu in gpus for slot in gpu.slots]
    entries = value.split(",")
    by_index = not value.startswith(("GPU-", "MIG-"))  # as CUDA: the first entry decides
    kind = "" if by_index else value[:4]
    candidates = [] if by_index else _uuid_candidates(kind, gpus)
    picked: list[PhysicalGpu | InferenceSlot] = []
    for position, entry in enumerate(entries):
        target: PhysicalGpu | InferenceSlot | None
        if by_index:
            index = _strtoul(entry.strip())
            target = gpus[index] if 0 <= index < len(gpus) else None
        elif not entry.startswith(kind):
            target = None
        else:
            matches = _uuid_matches(entry, candidates)
            target = matches[0] if len(matches) == 1 else None  # unknown or ambiguous
        if target is None:
            ignored = ",".join(entries[position:])
            log.warning(
                "CUDA_VISIBLE_DEVICES=%r: %r is not a %s of this machine; CUDA ignores it and "
                "what follows (%s)",
                value,
                entry,
                "GPU index" if by_index else f"{kind}UUID (or unique prefix)",
                ignored,
            )
            break
        if target in picked:
            log.warning(
                "CUDA_VISIBLE_DEVICES=%r names %r twice: CUDA then sees no GPU at all", value, entry
            )
            return []
        picked.append(target)
    mixed_models = len({g.name for g in gpus}) > 1
    if by_index and picked and mixed_models and device_order != "PCI_BUS_ID":
        log.warning(
            "CUDA_VISIBLE_DEVICES=%r is read as NVML indices (PCI bus order, as nvidia-smi "
            "shows them); with GPUs of different models CUDA numbers them fastest first unless "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID: set it, or list GPU UUIDs",
            value,
        )
    slots: list[InferenceSlot] = []
    for target in picked:
        slots.extend(target.slots if isinstance(target, PhysicalGpu) else (target,))
    return slots


# ---- workers.gpus ----------------------------------------------------------------------------
def inventory(gpus: Sequence[PhysicalGpu], visible: Sequence[InferenceSlot] | None = None) -> str:
    """What the host has, one line per GPU and MIG instance, for error messages."""
    if not gpus:
        return "  (no GPU found through NVML)"
    shown = None if visible is None else {s.uuid for s in visible}

    def hidden(slots: Sequence[InferenceSlot]) -> str:
        if shown is None or not slots or any(s.uuid in shown for s in slots):
            return ""
        return " (hidden by CUDA_VISIBLE_DEVICES)"

    lines = []
    for gpu in gpus:
        mig = ", MIG on" + ("" if gpu.slots else ", no MIG instance") if gpu.mig_enabled else ""
        lines.append(f"  {gpu.index}: {gpu.uuid} {gpu.name}{mig}{hidden(gpu.slots)}")
        if gpu.mig_enabled:
            for slot in gpu.slots:
                lines.append(f"     {slot.uuid} MIG {slot.profile}{hidden([slot])}")
    return "\n".join(lines)


def _resolve(
    entry: str | int, gpus: Sequence[PhysicalGpu], visible: Sequence[InferenceSlot]
) -> tuple[str, list[InferenceSlot]]:
    """What one ``workers.gpus`` entry names: a description and its slots."""
    if isinstance(entry, str) and entry.strip().isdigit():
        entry = int(entry.strip())
    if isinstance(entry, int):
        if 0 <= entry < len(gpus):
            gpu = gpus[entry]
            return f"GPU {entry} ({gpu.uuid})", list(gpu.slots)
        raise _unknown(entry, gpus, visible)
    text = entry.strip()
    if not text.startswith(("GPU-", "MIG-")):
        raise _unknown(entry, gpus, visible)
    matches = _uuid_matches(text, _uuid_candidates(text[:4], gpus))
    if len(matches) > 1:
        names = ", ".join(m.uuid for m in matches)
        raise ConfigError(
            f"workers.gpus: {entry!r} is the start of several UUIDs ({names}); give more of it"
        )
    if not matches:
        raise _unknown(entry, gpus, visible)
    (match,) = matches
    if isinstance(match, PhysicalGpu):
        return f"GPU {match.index} ({match.uuid})", list(match.slots)
    return f"MIG instance {match.uuid}", [match]


def _unknown(
    entry: str | int, gpus: Sequence[PhysicalGpu], visible: Sequence[InferenceSlot]
) -> ConfigError:
    return ConfigError(
        f"workers.gpus: no GPU or MIG instance {entry!r} on this machine (entries are NVML "
        f"indices as nvidia-smi shows them, GPU-… or MIG-… UUIDs); it has:\n"
        + inventory(gpus, visible)
    )


def select_slots(
    gpus: Sequence[PhysicalGpu],
    visible: Sequence[InferenceSlot],
    wanted: Sequence[str | int] | None,
) -> list[InferenceSlot]:
    """``visible`` narrowed to the ``workers.gpus`` entries ``wanted``, in their order.

    A GPU with MIG on stands for its visible MIG instances.  Raises ConfigError for an entry
    that names nothing on this host, nothing ``CUDA_VISIBLE_DEVICES`` lets through, or a slot
    an earlier entry already named.
    """
    if wanted is None:
        return list(visible)
    shown = {s.uuid for s in visible}
    taken: dict[str, str | int] = {}
    out: list[InferenceSlot] = []
    for entry in wanted:
        what, slots = _resolve(entry, gpus, visible)
        if not slots:
            raise ConfigError(
                f"workers.gpus: {entry!r} is {what}, which has MIG on but no MIG instance; "
                f"create instances (nvidia-smi mig -cgi ... -C) or list another GPU:\n"
                f"{inventory(gpus, visible)}"
            )
        usable = [s for s in slots if s.uuid in shown]
        if not usable:
            raise ConfigError(
                f"workers.gpus: {entry!r} is {what}, which CUDA_VISIBLE_DEVICES hides; "
                f"what exists:\n{inventory(gpus, visible)}"
            )
        for slot in usable:
            if slot.uuid in taken:
                raise ConfigError(
                    f"workers.gpus: {entry!r} and {taken[slot.uuid]!r} both name "
                    f"{slot.placement}; list each GPU or MIG instance once"
                )
            taken[slot.uuid] = entry
        out.extend(usable)
    return out
