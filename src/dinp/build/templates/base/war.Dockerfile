# dinp base for war apps: Debian's Tomcat 10 on OpenJDK 17, one app at context root /
# (webapps/ROOT), listening on $PORT (see dinp-tomcat and server.xml beside this file).
FROM {{ debian }}
ARG DEBIAN_FRONTEND=noninteractive
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update && apt-get install -y openjdk-17-jre-headless tomcat10 \
 && rm -rf /var/lib/apt/lists/* /var/lib/tomcat10/webapps/ROOT
COPY server.xml /etc/tomcat10/server.xml
COPY dinp-tomcat /usr/local/bin/dinp-tomcat
RUN chmod 755 /usr/local/bin/dinp-tomcat \
 && mkdir -p /var/lib/tomcat10/webapps /var/cache/tomcat10 /var/log/tomcat10 \
 && chown -R tomcat:tomcat /var/lib/tomcat10/webapps /var/cache/tomcat10 /var/log/tomcat10
WORKDIR /var/lib/tomcat10
