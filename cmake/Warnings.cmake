# The project's warning set. Every target in the tree gets it; CI builds add -Werror.
set(SHADOW_WARNINGS
  -Wall -Wextra -Wshadow -Wpointer-arith -Wcast-align -Wstrict-prototypes
  -Wmissing-prototypes -Wold-style-definition -Wvla -Wformat=2 -Wundef
  -Wno-unused-parameter)
if(CMAKE_C_COMPILER_ID STREQUAL "GNU")
  list(APPEND SHADOW_WARNINGS -Wlogical-op -Wduplicated-cond -Wduplicated-branches)
endif()
# gcc warns that TSan does not model atomic_thread_fence. The doorbell protocols (pipeline.c,
# shadowd's server.c, the client's shared-memory rings) order a flag store against a queue load
# with a seq_cst fence on each side; TSan then sees no ordering from the fences themselves (it
# can miss a race through them, it reports none spuriously here: make tsan is clean). Kept
# quiet so that TSan builds can use -Werror; replacing the fences by RMWs on the flag would let
# TSan model them (docs/threads.md).
if(SHADOW_SANITIZE MATCHES "thread" AND CMAKE_C_COMPILER_ID STREQUAL "GNU")
  list(APPEND SHADOW_WARNINGS -Wno-tsan)
endif()
if(SHADOW_WERROR)
  list(APPEND SHADOW_WARNINGS -Werror)
endif()
add_compile_options("$<$<COMPILE_LANGUAGE:C>:${SHADOW_WARNINGS}>")
