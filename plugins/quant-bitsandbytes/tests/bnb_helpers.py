"""Shared by the bitsandbytes tests."""

from __future__ import annotations

#: The modes every model is tested in: name -> BitsAndBytesConfig arguments.
MODES = {
    "int8": dict(load_in_8bit=True),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "fp4_double": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
}



def diffusers_on_cpu():
    """Diffusers' bitsandbytes quantizers refuse to start without a GPU, although bitsandbytes runs
    on the CPU: lift that check (and place the model on the CPU) so Diffusers is an oracle here."""
    from diffusers.quantizers.bitsandbytes import bnb_quantizer as bq

    for cls in (bq.BnB4BitDiffusersQuantizer, bq.BnB8BitDiffusersQuantizer):
        cls.validate_environment = lambda self, *a, **k: None
        cls.update_device_map = lambda self, device_map: {"": "cpu"} if device_map is None else device_map
