"""Easel's version string: written into infotexts ("Version: ...") and reported by the API.

Its own module so that the services and A1111's facade (modules.processing) both read it without
importing each other."""

VERSION = "easel-0.1.0"
