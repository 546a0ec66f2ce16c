# dinp base for php apps: Debian's php-cli (its built-in server serves the app).
FROM {{ debian }}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y php-cli ca-certificates \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /app
