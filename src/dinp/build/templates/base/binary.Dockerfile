# dinp base for binary apps: Debian's minimal root with CA certificates and time zones.
FROM {{ debian }}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /app
