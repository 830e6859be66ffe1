"""A client that writes its whole body before reading, as Python's http.client does, must read
the server's 413 for a body over the limit, not a broken pipe.

    python3 .ci/oversized_body.py HOST:PORT TOKEN
"""
import http.client
import sys

BODY_BYTES = 8 << 20
PATHS = ["/v1/accounts", "/v1/wallet/balance_transfer", "/v1/wallet/balance_transfers"]


def main() -> int:
    host, port = sys.argv[1].rsplit(":", 1)
    token = sys.argv[2]
    body = b'{"padding":"' + b"a" * BODY_BYTES + b'"}'
    failed = 0
    for path in PATHS:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            response = connection.getresponse()
            text = response.read()
        except OSError as error:
            print(f"{path}: no answer read after an {BODY_BYTES}-byte body: {error!r}")
            failed += 1
            continue
        finally:
            connection.close()
        ok = response.status == 413 and b"body_too_large" in text
        print(f"{path}: {response.status} {text[:100]!r}{'' if ok else '  <- expected 413 body_too_large'}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
