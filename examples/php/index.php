<?php
// dinp's php example: served by PHP's built-in server on $PORT.
header('Content-Type: text/plain');
printf("hello from php %s (app %s)\n", PHP_VERSION, getenv('DINP_APP') ?: '?');
