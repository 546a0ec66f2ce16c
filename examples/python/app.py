"""dinp's python example: a small web app on bottle, vendored in vendor/ (dinp puts
vendor/ on PYTHONPATH). Listens on $PORT."""

import os

from bottle import Bottle, run

app = Bottle()


@app.route("/")
def index() -> str:
    env = os.environ.get
    return (f"hello from python: app {env('DINP_APP', '?')} instance "
            f"{env('DINP_INSTANCE', '?')} release {env('DINP_RELEASE', '?')}\n")


@app.route("/health")
def health() -> str:
    return "ok\n"


if __name__ == "__main__":
    run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "8080")), quiet=True)
