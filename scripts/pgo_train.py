#!/usr/bin/env python3
"""The training load of the profile-guided build (scripts/build-pgo.sh).

Sends every request of the policy test suites (tests/policies/*.json, with the
entities a case brings) to a running `cdap-authz serve`, over keep-alive connections
from several threads, ROUNDS times each, and the suites' requests again in batches
of 30. The benchmarked requests of examples/requests/ are not among them, so that a
build is not trained on the very request it is then measured with.

Exits non-zero if fewer than 80% of the single requests got 200: the server then
does not run the bundled model as expected, and its profile would not be the
decision path's.

Usage: pgo_train.py BASE_URL [ROUNDS]
"""

import glob
import http.client
import json
import os
import sys
import threading
import urllib.parse

THREADS = 8
BATCH = 30


def suite_requests(root):
    requests = []
    for path in sorted(glob.glob(os.path.join(root, "tests/policies/*.json"))):
        with open(path) as f:
            suite = json.load(f)
        for case in suite.get("tests", []):
            request = dict(case["request"])
            if "entities" in case:
                request["entities"] = case["entities"]
            requests.append(request)
    return requests


def post(connection, path, body):
    connection.request("POST", path, body, {"content-type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response.status


def main():
    base = urllib.parse.urlsplit(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    cases = suite_requests(root)
    requests = [json.dumps(request).encode() for request in cases]
    batches = [
        json.dumps({"requests": cases[i : i + BATCH]}).encode()
        for i in range(0, len(cases), BATCH)
    ]
    statuses = {}
    lock = threading.Lock()

    def work(offset):
        connection = http.client.HTTPConnection(base.hostname, base.port)
        seen = {}
        for n in range(rounds):
            if n % THREADS != offset:
                continue
            for body in requests:
                status = post(connection, "/v1/is_authorized", body)
                seen[status] = seen.get(status, 0) + 1
            for body in batches:
                post(connection, "/v1/batch_is_authorized", body)
        connection.close()
        with lock:
            for status, count in seen.items():
                statuses[status] = statuses.get(status, 0) + count

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(statuses.values())
    print(f"{len(requests)} suite requests x {rounds}: statuses {statuses}")
    if total == 0 or statuses.get(200, 0) < 0.8 * total:
        sys.exit("too few requests answered 200: is the server running the bundled model?")


if __name__ == "__main__":
    main()
