"""Every output type of `xfrmwatch run`: config struct and implementation, by ``type``."""

from __future__ import annotations

from .alertmanager import AlertmanagerConfig, AlertmanagerOutput
from .base import DropSink, Output, OutputConfig
from .exec_hook import ExecConfig, ExecOutput
from .file import FileConfig, FileOutput, StdoutConfig, StdoutOutput
from .journald import JournaldConfig, JournaldOutput
from .syslog import SyslogConfig, SyslogOutput
from .webhook import WebhookConfig, WebhookOutput

#: type name -> (config struct (a tagged msgspec.Struct), Output class)
_TYPES: dict[str, tuple[type[OutputConfig], type[Output]]] = {
    "stdout": (StdoutConfig, StdoutOutput),
    "file": (FileConfig, FileOutput),
    "journald": (JournaldConfig, JournaldOutput),
    "syslog": (SyslogConfig, SyslogOutput),
    "webhook": (WebhookConfig, WebhookOutput),
    "exec": (ExecConfig, ExecOutput),
    "alertmanager": (AlertmanagerConfig, AlertmanagerOutput),
}
OUTPUT_CONFIGS: dict[str, type[OutputConfig]] = {k: v[0] for k, v in _TYPES.items()}
OUTPUTS: dict[str, type[Output]] = {k: v[1] for k, v in _TYPES.items()}


def create(config: OutputConfig, drops: DropSink | None = None) -> Output:
    """The output of this config; its drops are reported to ``drops``."""
    return OUTPUTS[str(config.__struct_config__.tag)](config, drops)
