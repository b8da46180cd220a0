def handle(req):
    """Answer one request: req is the body as text; the return value is the response."""
    return f"Hello, {req.strip() or 'world'}!"
