"""The typed keys under which the app keeps its shared objects (aiohttp AppKeys)."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from aiohttp_session_postgres import PostgresStorage

from .config import Settings
from .devices import DeviceCookies
from .passwords import PasswordHasher

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
HASHER = web.AppKey("hasher", PasswordHasher)
STORAGE = web.AppKey("storage", PostgresStorage)
DEVICES = web.AppKey("devices", DeviceCookies)
