<%@ page contentType="text/plain; charset=UTF-8" %>hello from JSP on <%= application.getServerInfo() %>, app <%= System.getenv("DINP_APP") %>
