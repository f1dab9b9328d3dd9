"""The one address a vLLM engine of the Slurm job listens on (vLLM's control routes, ``/pause``,
``/update_weights``, ``/collective_rpc``, take no API key, so it never listens on every
interface), chosen on its node, first match wins:

1. ``ENGINE_BIND_ADDRESS=<ip>``: that address (``--env ENGINE_BIND_ADDRESS=...`` only makes
   sense per node, so mostly for a one-node job or a wrapper that sets it);
2. ``ENGINE_BIND_INTERFACE=<name>`` (e.g. ``ib0``, ``eth1``): that interface's IPv4 address;
3. otherwise the node's own hostname, resolved: the trainer reaches each engine as
   ``http://<hostname>:<port>`` (``recipes.train``, hostnames from Slurm), so this is the
   address it connects to wherever the cluster's names resolve the same on every node.

Refused: every interface (0.0.0.0, ::) and loopback (the trainer runs on other nodes). With 1
or 2, the trainer still connects by hostname: the hostname must resolve to that address (the
engine task warns when, on its own node, it does not)."""

import fcntl
import socket
import struct
import sys

from megatron_fork.rollout.vllm_launch import check_private_host

BIND_ADDRESS = "ENGINE_BIND_ADDRESS"
BIND_INTERFACE = "ENGINE_BIND_INTERFACE"
_SIOCGIFADDR = 0x8915
"""Linux ``ioctl``: an interface's IPv4 address (``<linux/sockios.h>``)."""


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (SystemExit naming the node's interfaces
    when it has none, or no such interface exists)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            request = struct.pack("256s", name.encode()[:15])
            answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
        except OSError as error:
            names = ", ".join(n for _, n in socket.if_nameindex())
            raise SystemExit(
                f"{BIND_INTERFACE}={name}: no IPv4 address on it ({error.strerror}); this "
                f"node's interfaces: {names}"
            ) from error
    return socket.inet_ntoa(answer[20:24])  # struct ifreq: name[16], sockaddr_in (addr at 4)


def _is_loopback(address: str) -> bool:
    try:
        return socket.inet_aton(address)[0] == 127
    except OSError:
        return address == "::1"


def engine_bind_address(environ, hostname: str | None = None) -> str:
    """This node's engine address by the rules of the module docstring."""
    hostname = hostname or socket.gethostname()
    if environ.get(BIND_ADDRESS):
        address, source = environ[BIND_ADDRESS].strip(), BIND_ADDRESS
    elif environ.get(BIND_INTERFACE):
        name = environ[BIND_INTERFACE].strip()
        address, source = interface_address(name), f"{BIND_INTERFACE}={name}"
    else:
        address, source = socket.gethostbyname(hostname), f"hostname {hostname}"
    try:
        check_private_host(address)
    except ValueError as error:
        raise SystemExit(f"{source}: {error}") from error
    if _is_loopback(address):
        raise SystemExit(
            f"{source} gives the loopback address {address}: the trainer on other nodes cannot "
            f"reach it. Set {BIND_INTERFACE}=<the cluster interface> (--env "
            f"{BIND_INTERFACE}=ib0) or fix the node's hostname resolution"
        )
    return address


def warn_if_hostname_differs(address: str, hostname: str | None = None) -> None:
    """The trainer connects by hostname: say so when it resolves elsewhere on this node."""
    hostname = hostname or socket.gethostname()
    try:
        resolved = socket.gethostbyname(hostname)
    except OSError:
        resolved = None
    if resolved != address:
        print(
            f"engine_task: warning: listening on {address}, but {hostname} resolves to "
            f"{resolved} here; the trainer connects to http://{hostname}:<port>",
            file=sys.stderr,
        )
