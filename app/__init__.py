"""The demo app: a home page that greets the signed-in user, a login form, a logout, and a page of
the user's own sessions, on Heroku. Its sessions are kept by the aiohttp_session_postgres library,
which it uses only through that library's public names, as any other app would.

    python -m app [serve|sweep|user ...|sessions ...]
"""
