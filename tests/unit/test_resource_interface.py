"""resourceconfig.json's network_interface_name is used to pin sockets only where this
host has that interface: SDK 3's local mode writes "ethwe" into containers that only
have eth0 and lo, and gloo/NCCL set-up would fail on it."""

import socket

from container import read_resource_config
from tests.support.files import write_json


def config(sm_paths, interface):
    write_json(
        sm_paths.resource_config_file, {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "network_interface_name": interface}
    )
    return read_resource_config(sm_paths)


def test_an_interface_this_host_has_is_kept(sm_paths):
    assert config(sm_paths, "lo").network_interface_name == "lo"


def test_an_interface_this_host_lacks_is_dropped(sm_paths):
    assert "ethwe" not in {name for _, name in socket.if_nameindex()}
    resource = config(sm_paths, "ethwe")
    assert resource.network_interface_name is None
    assert resource.hosts == ("algo-1", "algo-2")


def test_the_name_is_trusted_where_interfaces_cannot_be_listed(sm_paths, monkeypatch):
    def unavailable():
        raise OSError("no interface table")

    monkeypatch.setattr(socket, "if_nameindex", unavailable)
    assert config(sm_paths, "ethwe").network_interface_name == "ethwe"
