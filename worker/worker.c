/* worker.c - expert store and dispatch server (issue 5). */
#include "worker/worker.h"
