"""Helpers every test suite shares (unit, host, aws, container): free ports, loopback HTTP
servers and request payloads. Test modules import from here, never from each other."""
