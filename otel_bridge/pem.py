"""PEM files the bridge is given (its own TLS keys): what can be told of one before it is used."""


def encrypted(path: str) -> bool:
    """Whether the private key in the PEM file at `path` is encrypted (a pass phrase opens it): PKCS #8's
    "BEGIN ENCRYPTED PRIVATE KEY", or the older "Proc-Type: 4,ENCRYPTED". OpenSSL asks for the pass phrase
    on the terminal when none is given (a service started from one waits there). False for a file that
    cannot be read: its reader says why, naming it."""
    try:
        with open(path, "rb") as key:
            return b"ENCRYPTED" in key.read(1 << 20)  # a chain may stand before the key
    except OSError:
        return False
