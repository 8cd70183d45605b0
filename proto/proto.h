/* proto.h - the cluster wire protocol (issue 5). Not yet implemented. */
#ifndef MOE_PROTO_H
#define MOE_PROTO_H

#include "model/model.h"

/* Protocol version spoken by this build. */
#define MOE_PROTO_VERSION 1

#endif
