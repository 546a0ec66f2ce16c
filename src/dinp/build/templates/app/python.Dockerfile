# dinp: a Python app with its libraries vendored in vendor/ (on PYTHONPATH).
# No RUN step: building an app is a copy onto the base image, a second or two.
FROM {{ base }}
WORKDIR /app
COPY app/ /app/
ENV PORT=8080 HOME=/tmp PYTHONPATH=/app/vendor:/app PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65534:65534
CMD {{ cmd }}
