"""The watchdog's own HTTP: a lean server and the client to an http-mode upstream."""
