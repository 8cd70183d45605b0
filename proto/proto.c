/* proto.c - wire messages (issue 5). */
#include "proto/proto.h"
