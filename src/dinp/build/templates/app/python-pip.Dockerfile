# dinp: a Python app that brings a requirements.txt instead of vendored libraries: pip
# installs them into /app/vendor at build time (slower than vendoring, and needs an index).
FROM {{ base }}
WORKDIR /app
ARG PIP_INDEX_URL=""
COPY dinp-ca.pem /etc/dinp-ca.pem
COPY app/requirements.txt /app/requirements.txt
RUN if [ -s /etc/dinp-ca.pem ]; then export PIP_CERT=/etc/dinp-ca.pem; fi; \
    python3 -m pip install --no-cache-dir --disable-pip-version-check --no-input \
        ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} --target /app/vendor -r requirements.txt
COPY app/ /app/
ENV PORT=8080 HOME=/tmp PYTHONPATH=/app/vendor:/app PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65534:65534
CMD {{ cmd }}
