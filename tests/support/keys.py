"""The keys every test's storage and app use (the app's settings name them
SESSION_AUTHENTICATION_KEY and SESSION_ENCRYPTION_KEY)."""

AUTH_KEY = b"test-authentication-key-0123456789abcdef"
ENC_KEY = b"0123456789abcdef0123456789abcdef"
