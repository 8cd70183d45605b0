/* worker.h - expert store and dispatch server (issue 5). Not yet implemented. */
#ifndef MOE_WORKER_H
#define MOE_WORKER_H

#include "proto/proto.h"

#endif
