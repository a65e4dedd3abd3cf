"""The view's HTTP/WebSocket server (aiohttp) and its MQTT feed (paho, subscribe only).

Ten times a second the event loop reads every MQTT message waiting on paho's socket, folds
them into `FleetState` and sends each page what changed (one batched WebSocket message per
page per tick). The MQTT client never publishes: the view is
read-only towards devices and daemons; acknowledging an alarm changes the view's own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from aiohttp import WSMsgType, web

from monitor.broker import ClientOptions, connect
from monitor.view.state import ClientCursor, FleetState

log = structlog.get_logger("monitor.view")

STATIC = Path(__file__).resolve().parent / "static"
TICK_HZ = 10.0


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


@dataclass(eq=False)
class Page:
    ws: web.WebSocketResponse
    cursor: ClientCursor = field(default_factory=ClientCursor)
    busy: bool = False  # a send is still in progress: skip this tick, catch up on the next


class MqttFeed:
    """Subscribe-only paho client, polled from the event loop at each tick (no network thread).

    Reading ten times a second lets each poll take every message waiting in the socket in one
    go: far cheaper than a wake-up per message at hundreds of stream chunks a second. Lost
    connections are retried every RETRY_S, the blocking connect in an executor thread.
    """

    RETRY_S = 1.0

    def __init__(self, opts: ClientOptions, state: FleetState, client_id: str) -> None:
        self.opts = opts
        self.state = state
        self.client_id = client_id
        self.client: mqtt.Client | None = None
        self.reconnects = 0
        self._retry_at = 0.0
        self._reconnecting: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Connect and subscribe (BrokerError if the broker refuses), then stop paho's thread."""
        client = connect(
            self.opts,
            self.client_id,
            on_message=self._on_message,
            subscriptions=self.state.subscriptions(),
        )
        client.loop_stop()  # from here on the event loop polls it
        subscribe_on_connect: Any = client.on_connect

        def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
            subscribe_on_connect(c, u, f, reason, p)
            if not reason.is_failure:
                self.state.set_broker(True, time.time())

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            self.state.set_broker(False, time.time())

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        self.client = client
        self.state.set_broker(True, time.time())

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.state.on_message(msg.topic, bytes(msg.payload), time.time())

    def poll(self) -> None:
        """Read every waiting message into the state; keepalive; reconnect when it is time."""
        c = self.client
        if c is None or self._reconnecting is not None:
            return
        sock = c.socket()
        if sock is None:
            if time.monotonic() >= self._retry_at:
                self._retry_at = time.monotonic() + self.RETRY_S
                loop = asyncio.get_running_loop()
                self._reconnecting = loop.run_in_executor(None, self._reconnect, c)
                self._reconnecting.add_done_callback(self._reconnected)
            return
        while True:
            if c.loop_read() != mqtt.MQTT_ERR_SUCCESS or c.socket() is None:
                break
            if not self._readable(sock):
                break
        if c.socket() is not None:
            if c.want_write():
                c.loop_write()
            c.loop_misc()

    @staticmethod
    def _readable(sock: Any) -> bool:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return bool(select.select([sock], [], [], 0)[0])

    def _reconnect(self, c: mqtt.Client) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            c.reconnect()
            self.reconnects += 1

    def _reconnected(self, _f: asyncio.Future[None]) -> None:
        self._reconnecting = None
        c = self.client
        if c is not None and c.socket() is not None and c.want_write():
            c.loop_write()  # the CONNECT; CONNACK (and the subscription) follow on later polls

    def drain(self) -> None:
        """Fold what arrived into the state (on the loop thread)."""
        self.poll()

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            self.client = None


class ViewServer:
    """The web app: `/` the page, `/static/*` its files, `/ws` updates, `/api/state` JSON."""

    def __init__(self, feed: MqttFeed, *, tick_hz: float = TICK_HZ) -> None:
        self.feed = feed
        self.state = feed.state
        self.tick_s = 1.0 / tick_hz
        self.pages: set[Page] = set()
        self._sends: set[asyncio.Task[None]] = set()
        self.app = web.Application()
        self.app.router.add_get("/", self.index)
        self.app.router.add_get("/ws", self.websocket)
        self.app.router.add_get("/api/state", self.api_state)
        self.app.router.add_static("/static/", STATIC, show_index=False)
        self.runner: web.AppRunner | None = None
        self.ticks = 0
        self.url = ""

    async def index(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def api_state(self, _request: web.Request) -> web.Response:
        s = self.state
        body = {
            "meta": s.meta(),
            "devices": [d.summary() for d in s.devices.values()],
            "alarms": [a.to_json() for a in list(s.alarms)[-50:]],
            "messages": s.messages,
            "skipped": s.skipped,
            "pages": len(self.pages),
            "watched": [sorted(p.cursor.watched) for p in self.pages],  # per page
            "ticks": self.ticks,
        }
        return web.json_response(body, dumps=_dumps)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            # Another site's page in the same browser must not read the fleet.
            raise web.HTTPForbidden(text="cross-origin WebSocket refused")
        # No permessage-deflate: zlib on every tick would cost more CPU than the bytes it saves.
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 16, compress=False)
        await ws.prepare(request)
        page = Page(ws)
        self.feed.drain()
        await ws.send_str(_dumps(self.state.snapshot(page.cursor)))
        self.pages.add(page)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self.on_page_message(page, msg.data)
        finally:
            self.pages.discard(page)
        return ws

    async def on_page_message(self, page: Page, text: str) -> None:
        """A page's request: which devices it shows, an acknowledgement, a device's detail."""
        try:
            req = json.loads(text)
        except ValueError:
            return
        if not isinstance(req, dict):
            return
        kind = req.get("t")
        if kind == "watch" and isinstance(req.get("devices"), list):
            watched = {d for d in req["devices"] if isinstance(d, str)}
            for gone in page.cursor.watched - watched:
                page.cursor.pieces.pop(gone, None)  # sent again in full when shown again
            page.cursor.watched = watched
        elif kind == "ack":
            ids = req.get("ids")
            device = req.get("device")
            self.state.ack(
                [i for i in ids if isinstance(i, int)] if isinstance(ids, list) else None,
                device if isinstance(device, str) else None,
            )
        elif kind == "device" and isinstance(req.get("id"), str):
            detail = self.state.device_detail(req["id"])
            if detail is not None:
                await page.ws.send_str(_dumps(detail))

    async def _send(self, page: Page, text: str) -> None:
        page.busy = True
        try:
            await page.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            page.busy = False

    async def ticker(self) -> None:
        """Ten times a second: drain MQTT, update the state, send each page its changes."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.tick_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() - next_at > 1.0:
                next_at = loop.time()  # fell far behind (suspended): do not burst
            self.feed.drain()
            watched: set[str] = set()
            for page in self.pages:
                watched |= page.cursor.watched
            self.state.tick(time.time(), watched)
            self.ticks += 1
            for page in list(self.pages):
                if page.busy or page.ws.closed:
                    continue
                update = self.state.update(page.cursor)
                if update is not None:
                    update["now"] = time.time()
                    task = loop.create_task(self._send(page, _dumps(update)))
                    self._sends.add(task)
                    task.add_done_callback(self._sends.discard)

    async def start(self, host: str, port: int) -> str:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/"
        return self.url

    async def stop(self) -> None:
        for page in list(self.pages):
            with contextlib.suppress(Exception):
                await page.ws.close()
        if self.runner is not None:
            await self.runner.cleanup()


async def serve(opts: ClientOptions, *, prefix: str, host: str, port: int, client_id: str) -> int:
    """Run until SIGINT/SIGTERM; prints the page's URL once it is listening."""
    state = FleetState(prefix)
    feed = MqttFeed(opts, state, client_id)
    await asyncio.get_running_loop().run_in_executor(None, feed.start)
    server = ViewServer(feed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await server.start(host, port)
        print(f"view: {url} (broker {opts.broker}, topics {prefix}/+/...)", flush=True)
        ticker = loop.create_task(server.ticker())
        await stop.wait()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    finally:
        await server.stop()
        feed.stop()
    return 0
