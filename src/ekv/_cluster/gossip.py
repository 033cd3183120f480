"""Membership by SWIM over authenticated datagrams: the driver of :class:`ekv._core.swim.Swim`.

Why a driver: the state machine (:mod:`ekv._core.swim`) is pure, so it is the same code in the
membership simulator and here; this module gives it time (the loop's clock), a channel (the
network seam's datagrams, :meth:`ekv._cluster.network.Network.open_datagram`, on the listener's
``host:port``), an envelope (:mod:`ekv._cluster.datagram`: the cookie's MAC, the instance, replay
protection) and an encoding (:mod:`ekv._core.swim_wire`), and hands its events to whoever wants
them: :mod:`ekv._cluster.membership` runs one for every listening ClusterNode (docs/scale.md,
"Built now, and next": the members SWIM names are dialed; sessions still form a full mesh).

* **Timers**: one loop timer at :meth:`Swim.next_deadline`, re-armed after every input.
* **Push-pull in pieces**: a ``Sync`` carries the whole view (O(N) bytes), more than a datagram
  holds past about 30 members; it is sent as several ``Sync`` datagrams of a share of the members
  each, only the first asking for a reply (each piece is merged on its own; a lost piece is made
  up for by the gossip and the next exchange).
* **Incarnation across restarts**: ``load_incarnation`` / ``save_incarnation`` (the data
  directory's; the cluster layer does not import storage) keep this member's incarnation: a
  restarted member starts above every incarnation it ever announced, so "alive" at the new one
  beats the "failed" the others hold about its previous life at once, without a round trip to
  learn what to refute. Saved before the first datagram and whenever it rises (a refutation,
  the leave); ``save_incarnation`` runs on the loop, so it must be quick (a small file's write).
* **Host-less addresses**: a member listening on a wildcard address without ``advertise`` is
  known as ``":port"``; each receiver completes the sender's own entries with the datagram's
  source host (:meth:`Membership._complete`; why, and the limits: :mod:`ekv._cluster.membership`)
  and drops host-less addresses of anyone else, so the state machine holds only complete
  addresses of others. Its datagrams are envelope version 2 (:mod:`ekv._cluster.datagram`). Its
  own datagram coming back (a seed that was its own address) is dropped and the seed forgotten.
* **Leaving**: :meth:`Membership.close` sends "left" (members see left, not failed) unless told
  not to.

Everything runs on the loop of the network (for a node: the process's "ekv-net" thread).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace

from ekv._cluster.datagram import Opener, Sealer
from ekv._cluster.network import DatagramChannel, Network
from ekv._core import swim_wire
from ekv._core.addresses import format_address, parse_address
from ekv._core.swim import NS_PER_S, Event, Message, PingReq, Status, Swim, SwimConfig, Sync, Update
from ekv._errors import ConfigError, ProtocolError

__all__ = ["Membership"]

_log = logging.getLogger("ekv.gossip")

_WILDCARDS = ("", "0.0.0.0", "::")

_MESSAGE_HEADROOM = 160
"""Bytes of a datagram's payload kept for a message's own fields beside its piggybacked gossip
(a PingReq's target and address): the gossip budget is the payload limit less this."""


class Membership:
    """One member of a SWIM cluster over datagrams (see the module docstring).

    ``name`` is the node id, ``instance`` the ekv instance name (only same-named instances talk),
    ``listen`` the address to bind (the TCP listener's; port 0 for a free one) and ``advertise``
    the ``host:port`` other members reach it at (default: the bound address; ``":port"`` on a
    wildcard address, completed by each receiver, see the module docstring). ``on_event`` is
    called on the loop with each :class:`~ekv._core.swim.Event` (joined, suspect, alive, failed,
    left)."""

    def __init__(
        self,
        network: Network,
        *,
        name: str,
        instance: str,
        cookie: bytes | str,
        listen: tuple[str, int],
        advertise: str | None = None,
        config: SwimConfig | None = None,
        seed: int | None = None,
        load_incarnation: Callable[[], int] | None = None,
        save_incarnation: Callable[[int], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self._network = network
        self.name = name
        self._instance = instance
        self._listen = listen
        self._advertise = advertise
        self._config = config or SwimConfig()
        self._seed = secrets.randbits(64) if seed is None else seed
        self._load = load_incarnation
        self._save = save_incarnation
        self._saved = -1
        self._on_event = on_event
        self._cookie = cookie
        self._sealer = Sealer(cookie, instance=instance, sender=name)
        self._opener = Opener(cookie, instance=instance)
        self._channel: DatagramChannel | None = None
        self._swim: Swim | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own: set[str] = set()  # addresses this member's own datagrams came back from
        self.stats: dict[str, int] = {"sent": 0, "received": 0, "undecodable": 0, "unsendable": 0, "hostless": 0}
        """Datagrams sent and accepted, received ones that passed the envelope but not the decoder,
        messages too large to send (names too long for the gossip's headroom), and updates (or
        indirect probes) dropped because they gave another member's address without its host."""

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Bind the datagram endpoint and start the state machine (alone until :meth:`join`);
        returns the bound address. The incarnation is one above the saved one, saved at once."""
        self._loop = asyncio.get_running_loop()
        self._channel = await self._network.open_datagram(self._listen, self._instance, self._received)
        host, port = self._channel.address
        wildcard = self._listen[0] in _WILDCARDS  # (no host of its own to give: see the module docstring)
        advertise = self._advertise or (f":{port}" if wildcard else format_address(host, port))
        if advertise.startswith(":"):
            parse_address(advertise, "advertise")  # (":port": a clear error now)
            self._sealer = Sealer(self._cookie, instance=self._instance, sender=self.name, hostless=True)
        incarnation = self._load() + 1 if self._load is not None else 0
        self._persist(incarnation)
        budget = min(self._config.piggyback_bytes, self._sealer.max_payload - _MESSAGE_HEADROOM)
        config = replace(self._config, piggyback_bytes=budget)
        self._swim = Swim(self.name, advertise, config=config, seed=self._seed, incarnation=incarnation)
        self._swim.join((), self._now())
        self._flush()
        return host, port

    def join(self, seeds: Sequence[str]) -> None:
        """Join through the members at ``seeds`` (``host:port``; one that answers suffices;
        retried every period until one does)."""
        swim = self._running()
        for seed in seeds:
            parse_address(seed, "seed")  # (a clear error now rather than datagrams to nowhere)
        swim.join([s for s in seeds if s not in self._own], self._now())
        self._flush()

    async def close(self, *, leave: bool = True) -> None:
        """Stop; with ``leave`` (the default) first tell a few members this one left, so that the
        cluster sees "left" rather than waiting out a suspicion to say "failed"."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        swim, channel = self._swim, self._channel
        if swim is not None and leave and not swim.left:
            swim.leave(self._now())
            self._persist(swim.incarnation)
            self._send_all(swim.take_messages())
        self._swim = None
        if channel is not None:
            self._channel = None
            channel.close()

    # -- the view -----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The ``host:port`` this member is known by."""
        return self._running().addr

    @property
    def incarnation(self) -> int:
        return self._running().incarnation

    def members(self) -> dict[str, Status]:
        """Every member known and its believed status (this one included)."""
        return self._running().members()

    def live_members(self) -> list[str]:
        """Members believed alive or suspect, this one excluded."""
        return self._running().live_members()

    def member(self, name: str) -> Update | None:
        """What this member believes of ``name`` (address, incarnation, status), or None."""
        return self._running().member(name)

    def view(self) -> list[Update]:
        """What this member believes of every other member it knows."""
        return self._running().view()

    @property
    def running(self) -> bool:
        """Started and not closed."""
        return self._swim is not None

    @property
    def drops(self) -> dict[str, int]:
        """Datagrams refused by the envelope's checks, by reason (size, format, mac, instance,
        replay)."""
        return dict(self._opener.drops)

    # -- the machinery ------------------------------------------------------------------------

    def _running(self) -> Swim:
        if self._swim is None:
            raise ConfigError("the membership is not running (start() it first, or it was closed)")
        return self._swim

    def _now(self) -> int:
        assert self._loop is not None
        return round(self._loop.time() * NS_PER_S)

    def _received(self, data: bytes, source: tuple[str, int]) -> None:
        swim = self._swim
        if swim is None:
            return
        opened = self._opener.open(data)
        if opened is None:
            return
        sender, payload = opened
        src = format_address(*source)
        if sender == self.name:  # this member, given its own address as a seed under another name
            self._own.add(src)
            swim.forget_seed(src)
            return
        try:
            message = swim_wire.decode(payload)
        except ProtocolError:
            self.stats["undecodable"] += 1
            return
        self.stats["received"] += 1
        completed = self._complete(message, sender, _unmapped(source[0]))
        if completed is not None:
            swim.receive(src, completed, self._now())
        self._flush()

    def _complete(self, message: Message, sender: str, host: str) -> Message | None:
        """``message`` with the sender's own ``":port"`` completed with ``host``, the datagram's
        source, and every other host-less address dropped (counted in ``stats["hostless"]``): a
        member gossips the completed form of what it heard directly, so a host-less address
        about a third party is not one to trust, nor one to send to (see the module docstring).
        None if nothing is left to handle (an indirect probe of a host-less address)."""
        if isinstance(message, PingReq) and message.addr.startswith(":"):
            self.stats["hostless"] += 1
            return None
        updates = message.members if isinstance(message, Sync) else message.gossip
        if not any(u.addr.startswith(":") for u in updates):
            return message
        kept: list[Update] = []
        for update in updates:
            if update.addr.startswith(":"):
                try:
                    port = parse_address(update.addr, "member address")[1]
                except ConfigError:
                    port = 0
                if update.node != sender or port == 0:
                    self.stats["hostless"] += 1
                    continue
                update = replace(update, addr=format_address(host, port))
            kept.append(update)
        if isinstance(message, Sync):
            return replace(message, members=tuple(kept))
        return replace(message, gossip=tuple(kept))

    def _tick(self) -> None:
        # (at least the deadline the timer was set for: asyncio runs a timer up to its clock's
        # resolution early, and a tick before the deadline would do nothing and re-arm it at once)
        now = max(self._now(), self._timer_at)
        self._timer = None
        self._timer_at = -1
        swim = self._swim
        if swim is not None:
            swim.tick(now)
            self._flush()

    def _flush(self) -> None:
        """After every input: send, persist a risen incarnation, hand out events, re-arm the timer."""
        swim = self._swim
        if swim is None:
            return
        if swim.incarnation > self._saved:
            self._persist(swim.incarnation)
        self._send_all(swim.take_messages())
        for event in swim.take_events():
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:  # a listener's bug must not stop the membership
                    _log.exception("ekv: membership event handler failed")
        self._arm(swim.next_deadline())

    def _arm(self, deadline_ns: int) -> None:
        if self._timer is not None and self._timer_at == deadline_ns:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline_ns
        self._timer = self._loop.call_at(deadline_ns / NS_PER_S, self._tick)

    def _persist(self, incarnation: int) -> None:
        if self._save is not None and incarnation > self._saved:
            self._save(incarnation)
        self._saved = max(self._saved, incarnation)

    def _send_all(self, messages: list[tuple[str, Message]]) -> None:
        channel = self._channel
        if channel is None:
            return
        for addr, message in messages:
            try:
                to = parse_address(addr, "member address")
                pieces = self._encode(message)
            except (ConfigError, ProtocolError):
                self.stats["unsendable"] += 1
                continue
            for payload in pieces:
                channel.send(self._sealer.seal(payload), to)
                self.stats["sent"] += 1

    def _encode(self, message: Message) -> list[bytes]:
        """The payloads of ``message``: one, or a Sync in pieces that each fit a datagram."""
        limit = self._sealer.max_payload
        data = swim_wire.encode(message)
        if len(data) <= limit:
            return [data]
        if not isinstance(message, Sync):
            raise ProtocolError(f"a {type(message).__name__} of {len(data)} bytes does not fit a datagram")
        return [swim_wire.encode(piece) for piece in _split(message, limit)]


def _unmapped(host: str) -> str:
    """``host`` with an IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 sender)
    as plain IPv4, which members on IPv4 sockets can send to."""
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return host if mapped is None else str(mapped)


def _split(sync: Sync, limit: int) -> list[Sync]:
    """``sync`` as Syncs of a share of its members each, under ``limit`` bytes encoded; only the
    first asks for a reply (the sender's own entry is first: it travels in the first piece)."""
    header = len(swim_wire.encode(Sync(sync.sender, sync.reply, ())))
    pieces: list[Sync] = []
    chunk: list[Update] = []
    size = header
    for update in sync.members:
        cost = len(update.node.encode()) + len(update.addr.encode()) + len(update.by.encode()) + 12
        if chunk and size + cost > limit:
            pieces.append(Sync(sync.sender, sync.reply and not pieces, tuple(chunk)))
            chunk, size = [], header
        chunk.append(update)
        size += cost
    pieces.append(Sync(sync.sender, sync.reply and not pieces, tuple(chunk)))
    return pieces
