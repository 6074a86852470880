"""barmaid: the backend of a home-built cocktail machine.

A Raspberry Pi switches liquid pumps; a GUI orders drinks over a WebSocket.
"""

__version__ = "0.1.0"
