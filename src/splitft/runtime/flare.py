"""SplitFT over NVIDIA FLARE's Collab API: the roles that run inside a FLARE job.

Only this module and :mod:`splitft.runtime.flare_job` import ``nvflare`` (the optional extra
``splitft[flare]``). The job has two kinds of object:

* :class:`SplitFTServer` runs on the FLARE server. Its ``@collab.main`` runs the ordinary
  ``train``/``resume`` (round loop, main server, fed server, policy, codec, checkpoints), with
  a :class:`FlareRuntime` in place of the in-process one.
* :class:`SplitFTSite` runs on every client site (``site-1`` .. ``site-N`` are clients 0 ..
  N-1). It builds its own :class:`~splitft.roles.client.Client` from the job's config and
  its site config, and publishes one function, ``handle(method, payload)``, through which the
  loop calls the client's methods with codec bytes. Raw data never leaves the site.

Calls are bytes both ways: FLARE's tensor path rejects non-contiguous tensors, and the codec's
bytes are what the byte ledger counts anyway. The main server is not re-entrant; here the
round loop on the server is its only caller and calls one client at a time, so its calls are
served one at a time by construction (clients never call the server).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nvflare.collab import collab

from splitft.config import Config
from splitft.config_io import load_toml
from splitft.data.prepare import prepare_client_data
from splitft.errors import ConfigError
from splitft.model.loading import load_tokenizer
from splitft.recipes import train as recipe
from splitft.recipes.experiment import build_client, load_shared_model
from splitft.runtime.base import CallFailure, Runtime
from splitft.sim.devices import device_preset
from splitft.wire.messages import control, read

SITE_CONFIG_ENV = "SPLITFT_SITE_CONFIG"
"""On a production site: path of the site's TOML (data_path, device)."""
SITE_KEYS = ("data_path", "device")
CLIENT_METHODS = frozenset(
    {
        "begin_round",
        "forward_step",
        "backward_step",
        "end_round",
        "heldout_forward",
        "tail_step",
        "heldout_score",
        "export_state",
        "restore_state",
    }
)
NO_LIMIT_S = 30 * 24 * 3600.0  # FLARE wants a number; 'no limit' is a month


def site_name(client_id: int) -> str:
    """FLARE site of client ``client_id`` (clients count from 0, sites from 1)."""
    return f"site-{client_id + 1}"


def site_index(name: str) -> int:
    """Client index of a FLARE site named ``site-<k>``."""
    prefix, _, number = name.rpartition("-")
    if prefix != "site" or not number.isdigit() or int(number) < 1:
        raise ConfigError(f"FLARE site {name!r}: SplitFT sites must be named site-1 .. site-N")
    return int(number) - 1


def read_site_config(path: str | os.PathLike[str]) -> dict[str, str]:
    """A site TOML: ``data_path`` (this site's training file; '' = its partition of the job's
    corpus) and ``device`` (its tier for the virtual clock; '' = the job's)."""
    try:
        values = load_toml(path)
    except ConfigError as err:
        raise ConfigError(f"site config: {err}") from None
    unknown = sorted(set(values) - set(SITE_KEYS))
    if unknown:
        raise ConfigError(f"site config {path}: unknown keys {unknown}; allowed: data_path, device")
    return {k: str(v) for k, v in values.items()}


class FlareRuntime(Runtime):
    """Calls client roles on FLARE sites through their published ``handle`` function.

    A call that raises on the site, times out (``timeout_s``) or cannot reach it comes back
    as a :class:`CallFailure`, never as an exception, so the loop drops that client and the
    round goes on with the others.
    """

    name = "flare"

    def __init__(self, sites: Mapping[str, Any], timeout_s: float = 0.0) -> None:
        self.sites = dict(sites)  # site name -> collab proxy
        self.timeout_s = timeout_s if timeout_s > 0 else NO_LIMIT_S

    def call(self, target: str, method: str, payload: bytes) -> bytes | CallFailure:
        site = site_name(int(target.rpartition("-")[2]))
        proxy = self.sites.get(site)
        if proxy is None:
            return CallFailure(target, method, f"no FLARE site {site} in this job")
        try:
            result = proxy(timeout=self.timeout_s).handle(method, payload)
        except Exception as err:  # CollabCallError (remote raise, timeout, gone) and anything local
            return CallFailure(target, method, f"{type(err).__name__}: {err}")
        if not isinstance(result, bytes):
            return CallFailure(target, method, f"site {site} answered {type(result).__name__}, not bytes")
        return result

    def describe(self, num_clients: int) -> dict[int, dict[str, Any]]:
        """What each reachable site says about itself (its device tier); not training traffic."""
        out = {}
        for i in range(num_clients):
            result = self.call(f"client-{i}", "describe", control())
            if not isinstance(result, CallFailure):
                out[i] = dict(read(result)["control"])
        return out


def with_site_tiers(cfg: Config, described: Mapping[int, Mapping[str, Any]]) -> Config:
    """``cfg`` with ``devices.clients`` set from the tiers the sites report (others keep the
    job's), so the virtual clock times each client on the device its site declares."""
    tiers = {i: d["device"] for i, d in described.items() if d.get("device")}
    if not tiers:
        return cfg
    n = cfg.federation.num_clients
    base = list(cfg.devices.clients) or [p.name for p in device_preset(cfg.devices.preset, n)]
    base = base * n if len(base) == 1 else base
    return cfg.with_overrides({"devices.clients": [tiers.get(i, base[i]) for i in range(n)]})


class SplitFTServer:
    """The FLARE server's part: runs the whole round loop (``train`` or ``resume``)."""

    def __init__(
        self, run_dir: str, config: dict, resume: bool = False, overrides: dict | None = None
    ) -> None:
        # FLARE rebuilds this object on the server from these constructor arguments (JSON).
        self.run_dir = run_dir
        self.config = config
        self.resume = resume
        self.overrides = overrides or {}

    @collab.main
    def run(self) -> str:
        cfg = Config.from_dict(self.config)
        runtime = FlareRuntime({proxy.name: proxy for proxy in collab.clients}, cfg.call_timeout_s)
        if self.resume:
            recipe.resume(self.run_dir, self.overrides, connect=lambda _exp: runtime)
        else:
            cfg = with_site_tiers(cfg, runtime.describe(cfg.federation.num_clients))
            recipe.train(cfg, self.run_dir, connect=lambda _exp: runtime)
        return self.run_dir


class CallProbe:
    """A server that only times calls (``scripts/bench_flare.py``): ``count`` echo calls of
    each payload size to every site; writes ``{size: seconds per call}`` as JSON to ``out``."""

    def __init__(self, out: str, sizes: list, count: int) -> None:
        self.out = out
        self.sizes = sizes
        self.count = count

    @collab.main
    def run(self) -> str:
        import json
        import time

        runtime = FlareRuntime({proxy.name: proxy for proxy in collab.clients})
        result = {}
        for size in self.sizes:
            payload = bytes(int(size))
            runtime.call("client-0", "echo", payload)  # warm-up
            started = time.perf_counter()
            for _ in range(self.count):
                for i in range(len(runtime.sites)):
                    answer = runtime.call(f"client-{i}", "echo", payload)
                    if isinstance(answer, CallFailure):
                        raise RuntimeError(answer.error)
            result[str(size)] = (time.perf_counter() - started) / (self.count * len(runtime.sites))
        Path(self.out).write_text(json.dumps(result) + "\n")
        return self.out


class SplitFTSite:
    """A client site: one :class:`Client`, built at job start from the config and site config.

    Any error, including one while building the client, comes back to the server as a failed
    call; nothing here exits the site's process.
    """

    def __init__(self, config: dict) -> None:
        self.config = config

    @collab.init
    def start(self) -> None:
        self.name = collab.site_name
        self.site = {k: str(collab.get_app_prop(k, "") or "") for k in SITE_KEYS}
        path = os.environ.get(SITE_CONFIG_ENV, "")
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.client = None
        self.error = ""
        try:
            if path:
                self.site.update(read_site_config(path))
            self.index = site_index(self.name)
            self.client = build_site_client(Config.from_dict(self.config), self.index, self.site["data_path"])
        except Exception as err:  # reported on the first call, which drops this client
            self.error = f"site {self.name} could not start: {type(err).__name__}: {err}"

    @collab.publish
    def handle(self, method: str, payload: bytes) -> bytes:
        """Run ``method`` of this site's client on ``payload`` (codec bytes), one call at a time."""
        with self._lock:
            try:
                return self._handle(method, payload)
            except SystemExit as err:  # a failed call, not a dead site
                raise RuntimeError(f"site {self.name}: {method} tried to exit ({err.code})") from None

    def _handle(self, method: str, payload: bytes) -> bytes:
        if method == "describe":
            return control(site=self.name, device=self.site["device"], error=self.error)
        if method == "echo":  # the transport alone (CallProbe)
            return payload
        if self.error:
            raise RuntimeError(self.error)
        if method not in CLIENT_METHODS:
            raise RuntimeError(f"site {self.name}: unknown method {method!r}")
        self.calls[method] += 1
        return getattr(self.client, method)(payload)


def build_site_client(cfg: Config, index: int, data_path: str = "") -> Any:
    """The client of site ``index``, built alone: the same model, adapters and data stream as
    in-process, from this site's own data only.

    Without ``data_path`` the site takes its own share of the job's corpus (what simulation
    does: the partition is computed from the seed, no other client's data is built); with it,
    the site trains on that local file alone.
    """
    cfg.validate()
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    n = cfg.federation.num_clients
    if not data_path:
        train, heldout = prepare_client_data(cfg.data, tokenizer, n, cfg.seed, index)
    elif not Path(data_path).exists():
        raise ConfigError(f"data_path {data_path} does not exist on this site")
    else:
        local = cfg.with_overrides({"data.train": data_path, "data.test": "", "data.validation": ""})
        train, heldout = prepare_client_data(local.data, tokenizer, 1, cfg.seed, 0)  # all of the file
    return build_client(cfg, index, train, heldout, load_shared_model(cfg, tokenizer))
