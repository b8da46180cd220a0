def handle(event, context):
    """Answer one HTTP request.

    event: body (bytes), headers, method, query, path. context: hostname.
    Return a dict with statusCode, body and headers, or a plain value (200).
    """
    name = event.body.decode().strip() or "world"
    return {
        "statusCode": 200,
        "body": f"Hello, {name}!",
        "headers": {"Content-Type": "text/plain"},
    }
