"""The demo's config for each coordination store (hakit.demo.cluster.render_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config import load_config
from hakit.demo.cluster import DemoSettings, render_config


def test_the_etcd_demo_config_names_its_endpoints(tmp_path: Path) -> None:
    endpoints = ("http://127.0.0.1:23791", "http://127.0.0.1:23792", "http://127.0.0.1:23793")
    path = tmp_path / "hakit.toml"
    path.write_text(
        render_config(tmp_path, DemoSettings(coordination="etcd", etcd_endpoints=endpoints))
    )
    cfg = load_config(path)
    assert cfg.coordination.backend == "etcd"
    assert cfg.coordination.etcd.endpoints == list(endpoints)


def test_the_default_demo_stays_embedded(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(render_config(tmp_path, DemoSettings()))
    assert load_config(path).coordination.backend == "sqlite"
    with pytest.raises(ValueError, match="sqlite or etcd"):
        render_config(tmp_path, DemoSettings(coordination="zk"))
