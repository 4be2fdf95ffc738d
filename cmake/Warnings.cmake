# The project's warning set. Every target in the tree gets it; CI builds add -Werror.
set(SHADOW_WARNINGS
  -Wall -Wextra -Wshadow -Wpointer-arith -Wcast-align -Wstrict-prototypes
  -Wmissing-prototypes -Wold-style-definition -Wvla -Wformat=2 -Wundef
  -Wno-unused-parameter)
if(CMAKE_C_COMPILER_ID STREQUAL "GNU")
  list(APPEND SHADOW_WARNINGS -Wlogical-op -Wduplicated-cond -Wduplicated-branches)
endif()
if(SHADOW_WERROR)
  list(APPEND SHADOW_WARNINGS -Werror)
endif()
add_compile_options("$<$<COMPILE_LANGUAGE:C>:${SHADOW_WARNINGS}>")
