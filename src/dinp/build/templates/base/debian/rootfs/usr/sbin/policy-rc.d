#!/bin/sh
# dinp: packages installed in an image must not try to start their services.
exit 101
