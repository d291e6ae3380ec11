"""`glaclip labelstudio`: the options of the Label Studio ML backend (registered on `cli.app`); the
backend itself is `integrations.labelstudio`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..config.registry import DEFAULT_METHOD
from .options import (
    ClipOpt,
    ClipWeightsOpt,
    DeviceOpt,
    DtypeOpt,
    MethodOpt,
    NoCacheOpt,
    ProtocolOpt,
    SetOpt,
    VfmOpt,
    VfmWeightsOpt,
    parse_overrides,
)


def labelstudio_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (0.0.0.0 for all)."),
    port: int = typer.Option(9090, "--port", help="Port to serve on."),
    url: Optional[str] = typer.Option(None, "--url", envvar="LABEL_STUDIO_URL", help="Label Studio's URL: the only "
                                      "host its files (/data/...) are fetched from and the API key is sent to."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LABEL_STUDIO_API_KEY", show_default=False,
                                          help="Label Studio API key: a personal access token or a legacy token "
                                          "(default: the token Label Studio sends on connecting). Needs --url."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Also fetch task image URLs from this host "
                                         "(HOST, HOST:PORT or http(s)://HOST[:PORT]; repeatable), with no "
                                         "credential. Default: none."),
    allow_root: List[Path] = typer.Option([], "--allow-root", help="Read task images given as local paths under "
                                          "this folder (repeatable). Default: none."),
    method: MethodOpt = DEFAULT_METHOD,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Use this benchmark's protocol row."),
    protocol: ProtocolOpt = None,
    prob_thd: Optional[float] = typer.Option(None, "--prob-thd", help="Pixels whose top probability is below this get "
                                             "the first label (list a background label first)."),
    settings: SetOpt = [],
    clip: ClipOpt = None,
    clip_weights: ClipWeightsOpt = None,
    vfm: VfmOpt = None,
    vfm_weights: VfmWeightsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    no_cache: NoCacheOpt = False,
) -> None:
    """Serve a Label Studio ML backend (needs: pip install 'glaclip\\[labelstudio]').

    Classes are the Labels of the project's BrushLabels (brush masks) or PolygonLabels (polygons);
    ';' in a label's value or its hint attribute gives synonyms. Connect it in the project's Model
    settings (Label Studio on this machine needs ML_BLOCK_LOCAL_IP=false to reach a local backend).
    """
    from ..config.protocols import effective
    from ..errors import require
    from ..integrations.labelstudio import Backend, serve
    from ..integrations.sources import ImageSource
    from .options import build_segmenter, say

    require("fastapi", "labelstudio"), require("uvicorn", "labelstudio")  # before the models load
    source = ImageSource(url, api_key, allow_host, allow_root)
    preset, _ = effective(method, dataset, protocol, parse_overrides(settings))
    seg = build_segmenter(clip, clip_weights, vfm, vfm_weights, preset, device, dtype, text_cache=not no_cache)
    backend = Backend(seg, source, prob_thd=prob_thd, echo=lambda line: say(f"glaclip: {line}"))
    say(f"glaclip: Label Studio ML backend on http://{host}:{port} (model version {backend.version}; Ctrl+C to "
         "stop)")
    say(f"glaclip: reads {source.describe()}")
    serve(backend, host, port)
