"""The ``quant`` block of a genome: its grammar, checks and the bit widths it gives each layer (no brevitas
here, so validating a study stays fast; ``nas_kd.arch.quant`` builds the networks)."""

from __future__ import annotations

from typing import Any

Arch = dict[str, Any]

FULL_PRECISION = 32
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, FULL_PRECISION)
FAMILIES = ("cnn", "resnet", "mobilenet")
QUANT_KEYS = ("weight_bits", "act_bits", "first_last_bits", "stages")


class QuantError(ValueError):
    """A genome's ``quant`` block is invalid; ``where`` is the dotted field inside it."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(message)


def _check_bits(value: Any, where: str) -> None:
    if isinstance(value, bool) or value not in SUPPORTED_BITS:
        raise QuantError(where, f"unsupported bit width {value!r}; brevitas backend: 2-8 or 32 (full precision)")


def check_bit_pair(bits: dict[str, Any], where: str, need_weight_bits: bool) -> None:
    """Weight and activation bits of one scope (global, a stage or a space's choices) are valid together."""
    for key in ("weight_bits", "act_bits"):
        if key in bits:
            _check_bits(bits[key], f"{where}.{key}")
    if need_weight_bits and "weight_bits" not in bits:
        raise QuantError(f"{where}.weight_bits", "required: activation bits need weight bits")
    if bits.get("weight_bits") == FULL_PRECISION and bits.get("act_bits", FULL_PRECISION) != FULL_PRECISION:
        raise QuantError(f"{where}.act_bits", "quantized activations need quantized weights (weight_bits < 32)")


def check_quant(arch: Arch) -> None:
    """Raise ``QuantError`` (``where`` relative to the genome) if ``arch["quant"]`` is unusable."""
    quant = arch.get("quant")
    if not isinstance(quant, dict):
        raise QuantError(".quant", "must be a mapping with weight_bits (and act_bits, first_last_bits, stages)")
    if "torchvision" in arch or arch.get("family") not in FAMILIES:
        raise QuantError(".quant", f"quantization supports the families {', '.join(FAMILIES)}, not torchvision models")
    unknown = sorted(set(quant) - set(QUANT_KEYS))
    if unknown:
        raise QuantError(f".quant.{unknown[0]}", f"unknown field; allowed: {', '.join(QUANT_KEYS)}")
    check_bit_pair(quant, ".quant", need_weight_bits=True)
    if "first_last_bits" in quant:
        _check_bits(quant["first_last_bits"], ".quant.first_last_bits")
    stages = quant.get("stages", [])
    if not isinstance(stages, list) or len(stages) > len(arch.get("stages", [])):
        raise QuantError(".quant.stages", "must be a list with at most one mapping per stage")
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or set(stage) - {"weight_bits", "act_bits"}:
            raise QuantError(f".quant.stages.{i}", "a stage override holds only weight_bits and act_bits")
        check_bit_pair(_stage_bits(quant, i), f".quant.stages.{i}", need_weight_bits=False)


def _global_bits(quant: dict[str, Any]) -> dict[str, int]:
    """Activation bits default to the weight bits (``w4a4``); ``act_bits: 32`` quantizes weights only."""
    return {"weight_bits": quant["weight_bits"], "act_bits": quant.get("act_bits", quant["weight_bits"])}


def _stage_bits(quant: dict[str, Any], stage: int) -> dict[str, int]:
    """A stage's override on the global widths (its act bits, too, default to its weight bits)."""
    overrides = quant.get("stages", [])
    override = overrides[stage] if stage < len(overrides) else {}
    return (
        {**_global_bits(quant), **_global_bits(override)}
        if "weight_bits" in override
        else {
            **_global_bits(quant),
            **override,
        }
    )


def layer_bits(quant: dict[str, Any], scope: str, stage: int = 0) -> tuple[int, int]:
    """(weight bits, input bits) of a layer in ``scope`` ("first", "last" or "stage")."""
    if scope == "stage":
        bits = _stage_bits(quant, stage)
        return bits["weight_bits"], bits["act_bits"]
    bits = _global_bits(quant)
    edge = quant.get("first_last_bits")
    if edge is None:  # common practice: first and last layer at 8 bits unless the rest is wider
        return max(8, bits["weight_bits"]), max(8, bits["act_bits"])
    return edge, edge if bits["act_bits"] < FULL_PRECISION else FULL_PRECISION


def bits_of(arch: Arch) -> dict[str, int | str]:
    """The ``weight_bits``/``act_bits`` columns of a trials table: 32 for a plain network, the stages' width
    otherwise (per-stage widths joined by "/" when they differ)."""
    quant = arch.get("quant")
    if not quant:
        return {"weight_bits": FULL_PRECISION, "act_bits": FULL_PRECISION}
    pairs = [layer_bits(quant, "stage", i) for i in range(len(arch.get("stages", [])))] or [layer_bits(quant, "stage")]
    out: dict[str, int | str] = {}
    for key, values in (("weight_bits", [p[0] for p in pairs]), ("act_bits", [p[1] for p in pairs])):
        out[key] = values[0] if len(set(values)) == 1 else "/".join(str(v) for v in values)
    return out


def set_quantizers(model: Any, enabled: bool) -> int:
    """Switch every quantizer of a quantized network on or off (off: its layers compute in full precision
    with the same weights); returns how many it switched. For the fp32 warm start
    (``train.quant_warmup_epochs``). brevitas' quantizer proxies carry a ``disable_quant`` flag that their
    forward reads; it is looked up by name so the trainer need not import brevitas (~4 s) for fp32 runs."""
    proxies = [module for module in model.modules() if hasattr(module, "disable_quant")]
    for proxy in proxies:
        proxy.disable_quant = not enabled
    return len(proxies)
