# dinp: a Java web app on Tomcat at context root /. The .war arrives unpacked in app/;
# dinp-tomcat (from the base image) starts Tomcat on $PORT.
FROM {{ base }}
COPY app/ /var/lib/tomcat10/webapps/ROOT/
ENV PORT=8080 HOME=/tmp
# dinp runs containers with a read-only root: what Tomcat writes (its work directory with
# the compiled JSPs, its log files beside the console, the per-host descriptors) is tmpfs.
LABEL io.dinp.writable="/var/cache/tomcat10,/var/log/tomcat10,/etc/tomcat10/Catalina"
USER tomcat
CMD {{ cmd }}
