"""Every output type of `xfrmwatch run`: config struct and implementation, by ``type``."""

from __future__ import annotations

from .base import Output, OutputConfig
from .file import FileConfig, FileOutput, StdoutConfig, StdoutOutput

#: type name -> config struct (a tagged msgspec.Struct)
OUTPUT_CONFIGS: dict[str, type[OutputConfig]] = {
    "stdout": StdoutConfig,
    "file": FileConfig,
}
#: type name -> Output class
OUTPUTS: dict[str, type[Output]] = {
    "stdout": StdoutOutput,
    "file": FileOutput,
}


def create(config: OutputConfig) -> Output:
    return OUTPUTS[config.__struct_config__.tag](config)  # type: ignore[index]
