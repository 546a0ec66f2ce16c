# dinp: a PHP app served by PHP's built-in web server with several workers.
FROM {{ base }}
WORKDIR /app
COPY app/ /app/
ENV PORT=8080 HOME=/tmp PHP_CLI_SERVER_WORKERS=4
# dinp runs containers with a read-only root: PHP's sessions (session.save_path) are tmpfs.
LABEL io.dinp.writable="/var/lib/php/sessions"
USER 65534:65534
CMD {{ cmd }}
